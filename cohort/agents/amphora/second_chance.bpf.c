// SPDX-License-Identifier: GPL-2.0
/*
 * The second chance's question, asked of every TCP packet an ACTIVE_ACTIVE amphora receives on
 * its front-end port (tc ingress): does a connection of this amphora own it? If not, the packet
 * is marked (UNOWNED_MARK) and the nftables table cohort_second_chance copies it to the cluster's
 * other amphorae (when it came from upstream) and drops it here. See second_chance.py.
 *
 * Owned: a packet whose four-tuple finds an established or closing connection, or a handshake
 * in progress, and the ACK that completes a SYN-cookie handshake of a listener here. Not owned:
 * one that finds only a listener, nothing, or a TIME-WAIT socket. A TIME-WAIT socket may be an
 * earlier connection with the same four-tuple while the router has just moved the live one here:
 * it would answer the packet itself, and the owner would never see it. Its own connection has
 * ended; at worst a retransmitted FIN goes unanswered. A SYN is a new flow, served where it lands.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define UNOWNED_MARK 0x40000000
#define IP_FRAGMENTED 0x3fff /* more fragments, or an offset */
#define IPV6_EXTENSIONS 4   /* extension headers skipped before TCP, at most */

static __always_inline int owned(struct __sk_buff *skb, struct bpf_sock_tuple *tuple, __u32 tuple_len,
                                 void *iph, __u32 iph_len, struct tcphdr *tcp)
{
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	int mine = 0;

	if (!sk)
		return 0;
	if (sk->state == BPF_TCP_LISTEN)
		/* 0: a valid cookie of this listener (only checked while it sends cookies). */
		mine = bpf_tcp_check_syncookie(sk, iph, iph_len, tcp, sizeof(*tcp)) == 0;
	else
		mine = sk->state != BPF_TCP_TIME_WAIT;
	bpf_sk_release(sk);
	return mine;
}

SEC("tc")
int second_chance(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct bpf_sock_tuple tuple = {};
	struct tcphdr *tcp;
	void *iph = eth + 1;
	__u32 iph_len, tuple_len;

	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = iph;

		/* A fragment carries no whole TCP header to look up: it goes on as it came (the kernel
		 * reassembles it; TCP sets DF, so only a broken path sends one). */
		if ((void *)(ip + 1) > end || ip->ihl < 5 || ip->protocol != IPPROTO_TCP ||
		    (ip->frag_off & bpf_htons(IP_FRAGMENTED)))
			return TC_ACT_OK;
		/* Options: TCP starts after them, at the header's own length (at most 60 bytes). The
		 * SYN-cookie check reads only the fixed header (the addresses). */
		tcp = iph + ip->ihl * 4;
		iph_len = sizeof(*ip);
		if ((void *)(tcp + 1) > end)
			return TC_ACT_OK;
		tuple.ipv4.saddr = ip->saddr;
		tuple.ipv4.daddr = ip->daddr;
		tuple.ipv4.sport = tcp->source;
		tuple.ipv4.dport = tcp->dest;
		tuple_len = sizeof(tuple.ipv4);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = iph;
		__u8 next;
		void *at;

		if ((void *)(ip6 + 1) > end)
			return TC_ACT_OK;
		/* Extension headers (hop-by-hop, routing, destination options) come before TCP; each
		 * says what follows and its length in 8-byte units beyond the first 8. A fragment, or
		 * more of them than a real path sends, goes on as it came. */
		next = ip6->nexthdr;
		at = ip6 + 1;
#pragma unroll
		for (int i = 0; i < IPV6_EXTENSIONS; i++) {
			__u8 *ext = at;

			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING && next != IPPROTO_DSTOPTS)
				break;
			if ((void *)(ext + 2) > end)
				return TC_ACT_OK;
			next = ext[0];
			at = ext + (ext[1] + 1) * 8;
		}
		if (next != IPPROTO_TCP)
			return TC_ACT_OK;
		tcp = at;
		if ((void *)(tcp + 1) > end)
			return TC_ACT_OK;
		__builtin_memcpy(tuple.ipv6.saddr, &ip6->saddr, sizeof(tuple.ipv6.saddr));
		__builtin_memcpy(tuple.ipv6.daddr, &ip6->daddr, sizeof(tuple.ipv6.daddr));
		tuple.ipv6.sport = tcp->source;
		tuple.ipv6.dport = tcp->dest;
		iph_len = sizeof(*ip6);
		tuple_len = sizeof(tuple.ipv6);
	} else {
		return TC_ACT_OK;
	}
	if (!(tcp->syn && !tcp->ack) && !owned(skb, &tuple, tuple_len, iph, iph_len, tcp))
		skb->mark = UNOWNED_MARK;
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
