/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * The C side of dataplane::net::dpdk. DPDK's fast path (rx/tx burst, mbuf
 * alloc/free/append, mtod) is `static inline` in its headers, so Rust cannot
 * call it directly; these one-line wrappers give it external linkage. The
 * port set-up lives here too because `struct rte_eth_conf` is a nest of
 * unions and bitfields that is simpler to fill in C. bindgen reads this file
 * (and the few exported DPDK functions listed in build.rs).
 */
#ifndef MS_DPDK_SHIM_H
#define MS_DPDK_SHIM_H

#include <stdint.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>

/* rte_errno of the calling thread (a per-lcore TLS variable in DPDK). */
int ms_dpdk_errno(void);

/* rte_eth_rx_burst / rte_eth_tx_burst. */
uint16_t ms_dpdk_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t ms_dpdk_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

/* rte_pktmbuf_alloc; NULL when the pool is empty. */
struct rte_mbuf *ms_dpdk_mbuf_alloc(struct rte_mempool *mp);
/* rte_pktmbuf_free (the whole chain). */
void ms_dpdk_mbuf_free(struct rte_mbuf *m);
/* rte_pktmbuf_free_bulk. */
void ms_dpdk_mbuf_free_bulk(struct rte_mbuf **pkts, unsigned int n);

/* rte_pktmbuf_mtod and data_len of the first segment; *segments = nb_segs. */
const uint8_t *ms_dpdk_mbuf_data(const struct rte_mbuf *m, uint16_t *len, uint16_t *segments);
/* rte_pktmbuf_append: room for len bytes at the end of a fresh mbuf; NULL if it does not fit. */
uint8_t *ms_dpdk_mbuf_append(struct rte_mbuf *m, uint16_t len);

/* Facts about a port before it is configured. */
struct ms_dpdk_port_info {
	uint16_t max_rx_queues;
	uint16_t max_tx_queues;
	uint64_t rss_offloads; /* flow_type_rss_offloads: 0 = the port has no RSS */
	int socket_id;
	char driver[64];
};
int ms_dpdk_port_info(uint16_t port, struct ms_dpdk_port_info *info);

/*
 * rte_eth_dev_configure (RSS on IPv4/UDP when asked and the port has it),
 * rx/tx queue set-up (descriptors adjusted to the port's limits), promiscuous
 * off-is-fine, rte_eth_dev_start. Returns 0 or a negative errno; *stage names
 * the step that failed (0 configure, 1 rx queue, 2 tx queue, 3 start).
 */
int ms_dpdk_port_start(uint16_t port, uint16_t rx_queues, uint16_t tx_queues, uint16_t rx_desc,
		       uint16_t tx_desc, struct rte_mempool *mp, int rss, int *stage);

/* The port's MAC address; 0 or a negative errno. */
int ms_dpdk_port_mac(uint16_t port, uint8_t mac[6]);

#endif
