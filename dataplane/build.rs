//! With the `dpdk` feature: compiles the C shim (`csrc/dpdk_shim.c`) against Debian's DPDK
//! (found through pkg-config as `libdpdk`) and generates the Rust bindings with bindgen.
//! Without the feature it does nothing, so the crate builds on machines without DPDK.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "dpdk")]
    dpdk::build();
}

#[cfg(feature = "dpdk")]
mod dpdk {
    use std::path::PathBuf;

    /// The DPDK release line the shim and the bindings are written for.
    const DPDK_VERSION_MIN: &str = "22.11";

    pub fn build() {
        println!("cargo:rerun-if-changed=csrc/dpdk_shim.c");
        println!("cargo:rerun-if-changed=csrc/dpdk_shim.h");
        let lib = pkg_config::Config::new()
            .atleast_version(DPDK_VERSION_MIN)
            .probe("libdpdk")
            .unwrap_or_else(|e| {
                panic!(
                    "the `dpdk` feature needs DPDK >= {DPDK_VERSION_MIN} found through pkg-config \
                     (Debian: apt-get install libdpdk-dev pkg-config libclang-dev; \
                     scripts/setup.sh does it): {e}"
                )
            });
        let mut cc = cc::Build::new();
        cc.file("csrc/dpdk_shim.c").opt_level(2);
        // -include rte_config.h and -march come from pkg-config's cflags, not only the -I paths.
        for path in &lib.include_paths {
            cc.include(path);
        }
        for flag in dpdk_cflags() {
            cc.flag(&flag);
        }
        cc.warnings(true).compile("ms_dpdk_shim");

        let mut clang_args: Vec<String> = lib
            .include_paths
            .iter()
            .map(|p| format!("-I{}", p.display()))
            .collect();
        clang_args.extend(dpdk_cflags());
        let bindings = bindgen::Builder::default()
            .header("csrc/dpdk_shim.h")
            .clang_args(clang_args)
            .allowlist_function("ms_dpdk_.*")
            .allowlist_function("rte_eal_init")
            .allowlist_function("rte_eal_cleanup")
            .allowlist_function("rte_strerror")
            .allowlist_function("rte_eth_dev_count_avail")
            .allowlist_function("rte_eth_dev_get_port_by_name")
            .allowlist_function("rte_eth_dev_stop")
            .allowlist_function("rte_eth_dev_close")
            .allowlist_function("rte_eth_stats_get")
            .allowlist_function("rte_pktmbuf_pool_create")
            .allowlist_function("rte_mempool_free")
            .allowlist_function("rte_mempool_avail_count")
            .allowlist_function("rte_mempool_in_use_count")
            .allowlist_function("rte_dev_probe")
            .allowlist_type("ms_dpdk_port_info")
            .allowlist_type("rte_eth_stats")
            // Reached only through pointers from Rust: declared opaque in sys.rs (their layouts
            // are unions and bitfields bindgen would turn into unsafe accessors).
            .blocklist_type("rte_mbuf.*")
            .blocklist_type("rte_mempool.*")
            .blocklist_type("rte_memzone.*")
            .layout_tests(false)
            // No derived Default: for C arrays and unions bindgen writes unsafe impls; sys.rs
            // has the two zeroed constructors the backend needs.
            .derive_default(false)
            .generate_comments(false)
            .generate()
            .expect("bindgen over csrc/dpdk_shim.h (needs libclang: apt-get install libclang-dev)");
        let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
        bindings
            .write_to_file(out.join("dpdk_bindings.rs"))
            .expect("write dpdk_bindings.rs");
    }

    /// The non-path compiler flags pkg-config gives (`-include rte_config.h`, `-march=...`).
    fn dpdk_cflags() -> Vec<String> {
        let out = std::process::Command::new("pkg-config")
            .args(["--cflags-only-other", "libdpdk"])
            .output()
            .expect("pkg-config --cflags-only-other libdpdk");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut flags = Vec::new();
        let mut words = text.split_whitespace();
        while let Some(w) = words.next() {
            if w == "-include" {
                if let Some(file) = words.next() {
                    flags.push("-include".to_string());
                    flags.push(file.to_string());
                }
            } else {
                flags.push(w.to_string());
            }
        }
        flags
    }
}
