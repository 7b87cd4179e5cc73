// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * link_loss: a lossy link for tests and chaos drills, as a tc (cls_bpf,
 * direct-action) program. Kernels without sch_netem (this project's CI
 * machines) can still drop a share of the frames on a real link: attached to
 * a veth's egress and/or ingress, it drops IPv4/UDP packets with probability
 * threshold / 2^32, from a per-CPU xorshift64 generator seeded by user space
 * (so a run is repeatable on one CPU). Everything else (ARP, IPv6, TCP)
 * passes untouched. Drops and passes are counted per CPU.
 *
 * Maps (written and read by xdp-programs/src/link_loss.rs):
 *   loss_cfg    ARRAY[2] u64      [0] threshold (0..=2^32), [1] seed
 *   loss_state  PERCPU_ARRAY[1]   xorshift64 state (0 = not yet seeded)
 *   loss_counts PERCPU_ARRAY[2]   [0] dropped, [1] passed (IPv4/UDP only)
 */
#include <stddef.h>
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} loss_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} loss_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} loss_counts SEC(".maps");

static __always_inline int is_ipv4_udp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > data_end)
		return 0;
	return eth->h_proto == bpf_htons(ETH_P_IP) && ip->protocol == IPPROTO_UDP;
}

SEC("classifier")
int link_loss(struct __sk_buff *skb)
{
	__u32 zero = 0, one = 1;
	__u64 *threshold, *seed, *state, *count, x;
	__u32 idx;

	if (!is_ipv4_udp(skb))
		return TC_ACT_OK;
	threshold = bpf_map_lookup_elem(&loss_cfg, &zero);
	seed = bpf_map_lookup_elem(&loss_cfg, &one);
	state = bpf_map_lookup_elem(&loss_state, &zero);
	if (!threshold || !seed || !state)
		return TC_ACT_OK;
	x = *state;
	if (x == 0) {
		x = *seed ^ (((__u64)bpf_get_smp_processor_id() + 1) * 0x9e3779b97f4a7c15ULL);
		if (x == 0)
			x = 1;
	}
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	*state = x;
	idx = (x >> 32) < *threshold ? 0 : 1;
	count = bpf_map_lookup_elem(&loss_counts, &idx);
	if (count)
		*count += 1;
	return idx == 0 ? TC_ACT_SHOT : TC_ACT_OK;
}

char _license[] SEC("license") = "MIT OR Apache-2.0";
