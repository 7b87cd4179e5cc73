/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/* See dpdk_shim.h. Every function is a thin wrapper; no state lives here. */
#include "dpdk_shim.h"

#include <string.h>

int ms_dpdk_errno(void)
{
	return rte_errno;
}

uint16_t ms_dpdk_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t ms_dpdk_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *ms_dpdk_mbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

void ms_dpdk_mbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

void ms_dpdk_mbuf_free_bulk(struct rte_mbuf **pkts, unsigned int n)
{
	rte_pktmbuf_free_bulk(pkts, n);
}

const uint8_t *ms_dpdk_mbuf_data(const struct rte_mbuf *m, uint16_t *len, uint16_t *segments)
{
	*len = m->data_len;
	*segments = m->nb_segs;
	return rte_pktmbuf_mtod(m, const uint8_t *);
}

uint8_t *ms_dpdk_mbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return (uint8_t *)rte_pktmbuf_append(m, len);
}

int ms_dpdk_port_info(uint16_t port, struct ms_dpdk_port_info *info)
{
	struct rte_eth_dev_info dev;
	int rc;

	memset(info, 0, sizeof(*info));
	rc = rte_eth_dev_info_get(port, &dev);
	if (rc != 0)
		return rc;
	info->max_rx_queues = dev.max_rx_queues;
	info->max_tx_queues = dev.max_tx_queues;
	info->rss_offloads = dev.flow_type_rss_offloads;
	info->socket_id = rte_eth_dev_socket_id(port);
	if (dev.driver_name != NULL)
		strncpy(info->driver, dev.driver_name, sizeof(info->driver) - 1);
	return 0;
}

int ms_dpdk_port_start(uint16_t port, uint16_t rx_queues, uint16_t tx_queues, uint16_t rx_desc,
		       uint16_t tx_desc, struct rte_mempool *mp, int rss, int *stage)
{
	struct rte_eth_conf conf;
	struct rte_eth_dev_info dev;
	uint16_t nb_rx = rx_desc, nb_tx = tx_desc, q;
	int socket = rte_eth_dev_socket_id(port);
	int rc;

	memset(&conf, 0, sizeof(conf));
	*stage = 0;
	rc = rte_eth_dev_info_get(port, &dev);
	if (rc != 0)
		return rc;
	if (rss && rx_queues > 1 && (dev.flow_type_rss_offloads & RTE_ETH_RSS_NONFRAG_IPV4_UDP)) {
		conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		conf.rx_adv_conf.rss_conf.rss_key = NULL;
		conf.rx_adv_conf.rss_conf.rss_hf =
			dev.flow_type_rss_offloads & (RTE_ETH_RSS_IPV4 | RTE_ETH_RSS_NONFRAG_IPV4_UDP);
	}
	rc = rte_eth_dev_configure(port, rx_queues, tx_queues, &conf);
	if (rc != 0)
		return rc;
	rc = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nb_rx, &nb_tx);
	if (rc != 0)
		return rc;
	*stage = 1;
	for (q = 0; q < rx_queues; q++) {
		rc = rte_eth_rx_queue_setup(port, q, nb_rx, socket < 0 ? SOCKET_ID_ANY : socket,
					    NULL, mp);
		if (rc != 0)
			return rc;
	}
	*stage = 2;
	for (q = 0; q < tx_queues; q++) {
		rc = rte_eth_tx_queue_setup(port, q, nb_tx, socket < 0 ? SOCKET_ID_ANY : socket,
					    NULL);
		if (rc != 0)
			return rc;
	}
	*stage = 3;
	return rte_eth_dev_start(port);
}

int ms_dpdk_port_mac(uint16_t port, uint8_t mac[6])
{
	struct rte_ether_addr addr;
	int rc = rte_eth_macaddr_get(port, &addr);

	if (rc == 0)
		memcpy(mac, addr.addr_bytes, 6);
	return rc;
}
