# One entry point for developers. Every target runs its own idempotent set-up.
.PHONY: demo demo-dpdk shm-demo test bench bench-quick setup fmt clippy

demo:            ## the main job: remote publisher -> XDP/AF_XDP node -> local subscriber, in its own netns
	scripts/demo.sh

demo-dpdk:       ## the same demo with the node on DPDK (net_af_packet vdev on the veth)
	scripts/demo.sh --backend dpdk

shm-demo:        ## two-process shared-memory pub/sub demo with latency figures
	scripts/demo.sh --shm

test:            ## the whole test suite (what CI runs)
	scripts/test.sh

setup:
	scripts/setup.sh --test

bench:           ## every ms-bench suite, full length
	scripts/setup.sh && scripts/hugepages.sh reserve 512 && \
	  (cargo run --release --locked -p benches --features dpdk --bin ms-bench -- all; rc=$$?; scripts/hugepages.sh release; exit $$rc)

bench-quick:
	scripts/setup.sh && scripts/hugepages.sh reserve 512 && \
	  (cargo run --release --locked -p benches --features dpdk --bin ms-bench -- all --quick; rc=$$?; scripts/hugepages.sh release; exit $$rc)

fmt:
	cargo fmt --all

clippy:
	cargo clippy --workspace --all-targets --features dataplane/dpdk,memstreamer/dpdk,benches/dpdk -- -D warnings
