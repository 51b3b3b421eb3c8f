/*-------------------------------------------------------------------------
 *
 * http_address.c
 *	  Which network addresses the relay refuses to connect to while
 *	  eo.http_allow_link_local is off: link-local addresses (IPv4
 *	  169.254.0.0/16, IPv6 fe80::/10), where cloud instance metadata
 *	  services answer (169.254.169.254 on most clouds), and well-known
 *	  metadata addresses outside those ranges (AWS's IPv6 fd00:ec2::254,
 *	  Alibaba Cloud's 100.100.100.200).  IPv4 addresses written as IPv6
 *	  (IPv4-mapped ::ffff:a.b.c.d, and the NAT64 well-known prefix
 *	  64:ff9b::/96) are judged by the IPv4 address inside.
 *
 *	  Two callers: the libcurl callbacks of http_request.c, with the
 *	  address a connection is about to be opened to (after name
 *	  resolution, so a host name that resolves, or later re-resolves, to
 *	  such an address is refused too), and the option checks of
 *	  http_options.c, with the host of a URL when it is a literal address.
 *
 *	  eo_http_sockaddr_refused() runs inside libcurl callbacks: it never
 *	  allocates and never raises an error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "destination.h"
#include "relay.h"

/* 169.254.0.0/16, or a metadata address outside it; NULL if neither. */
static const char *
ipv4_refused(const uint8 *a)
{
	if (a[0] == 169 && a[1] == 254)
		return "a link-local address";
	if (a[0] == 100 && a[1] == 100 && a[2] == 100 && a[3] == 200)
		return "a cloud metadata address";
	return NULL;
}

/* fe80::/10, fd00:ec2::254, or an IPv4 address inside IPv6; NULL if none. */
static const char *
ipv6_refused(const uint8 *a)
{
	static const uint8 aws_imds[16] = {0xfd, 0x00, 0x0e, 0xc2, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0x02, 0x54};
	static const uint8 v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const uint8 nat64[12] = {0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};

	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
		return "a link-local address";
	if (memcmp(a, aws_imds, 16) == 0)
		return "a cloud metadata address";
	if (memcmp(a, v4mapped, 12) == 0 || memcmp(a, nat64, 12) == 0)
		return ipv4_refused(a + 12);
	return NULL;
}

/*
 * eo_http_sockaddr_refused
 *		Why the relay must not connect to "sa", or NULL if it may (always
 *		NULL while eo.http_allow_link_local is on, and for families other
 *		than IPv4 and IPv6).  When refused and "text" is not NULL, the
 *		address is written there as text (at most textlen bytes, always
 *		terminated).  Returns a constant; safe inside libcurl callbacks.
 */
const char *
eo_http_sockaddr_refused(const struct sockaddr *sa, char *text, size_t textlen)
{
	const char *why = NULL;
	const void *bytes = NULL;

	if (eo_http_allow_link_local || sa == NULL)
		return NULL;
	if (sa->sa_family == AF_INET)
	{
		bytes = &((const struct sockaddr_in *) sa)->sin_addr;
		why = ipv4_refused(bytes);
	}
	else if (sa->sa_family == AF_INET6)
	{
		bytes = &((const struct sockaddr_in6 *) sa)->sin6_addr;
		why = ipv6_refused(bytes);
	}
	if (why != NULL && text != NULL && textlen > 0)
	{
		if (inet_ntop(sa->sa_family, bytes, text, textlen) == NULL)
			strlcpy(text, "?", textlen);
	}
	return why;
}

/*
 * eo_http_ip_text_refused
 *		The same for an address written as text (libcurl's
 *		CURLINFO_PRIMARY_IP, or an allowlist entry); NULL if the text is not
 *		an IPv4 or IPv6 address, or the address is allowed.  Safe inside
 *		libcurl callbacks.
 */
const char *
eo_http_ip_text_refused(const char *ip)
{
	struct sockaddr_in6 sin6;
	struct sockaddr_in sin;
	char		buf[64];
	char	   *zone;

	if (ip == NULL)
		return NULL;
	strlcpy(buf, ip, sizeof(buf));
	/* A zone id ("fe80::1%eth0") does not change what the address is. */
	zone = strchr(buf, '%');
	if (zone != NULL)
		*zone = '\0';
	memset(&sin, 0, sizeof(sin));
	memset(&sin6, 0, sizeof(sin6));
	if (inet_pton(AF_INET, buf, &sin.sin_addr) == 1)
	{
		sin.sin_family = AF_INET;
		return eo_http_sockaddr_refused((struct sockaddr *) &sin, NULL, 0);
	}
	if (inet_pton(AF_INET6, buf, &sin6.sin6_addr) == 1)
	{
		sin6.sin6_family = AF_INET6;
		return eo_http_sockaddr_refused((struct sockaddr *) &sin6, NULL, 0);
	}
	return NULL;
}

/*
 * eo_http_host_refused
 *		For the host of a destination's URL (as libcurl's URL parser gives
 *		it: IPv6 in brackets): why the relay must not connect to it, when it
 *		is a literal address that is refused; NULL for host names (they are
 *		checked on the resolved address when connecting) and allowed
 *		addresses.  The host is read the way the resolver reads a numeric
 *		host (getaddrinfo with AI_NUMERICHOST: "2852039166" and
 *		"169.254.43518" are 169.254.169.254 too).  Must not be called inside
 *		libcurl callbacks (getaddrinfo allocates).
 */
const char *
eo_http_host_refused(const char *host)
{
	char		buf[256];
	size_t		len = strlen(host);
	struct addrinfo hints;
	struct addrinfo *res = NULL;
	const char *why = NULL;
	char	   *zone;

	if (eo_http_allow_link_local)
		return NULL;
	if (len >= 2 && host[0] == '[' && host[len - 1] == ']')
	{
		host++;
		len -= 2;
	}
	if (len == 0 || len >= sizeof(buf))
		return NULL;
	memcpy(buf, host, len);
	buf[len] = '\0';
	/* A zone id ("fe80::1%25eth0") does not change what the address is. */
	zone = strchr(buf, '%');
	if (zone != NULL)
		*zone = '\0';

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICHOST;
	if (getaddrinfo(buf, NULL, &hints, &res) != 0)
		return NULL;
	for (struct addrinfo *ai = res; ai != NULL && why == NULL; ai = ai->ai_next)
		why = eo_http_sockaddr_refused(ai->ai_addr, NULL, 0);
	freeaddrinfo(res);
	return why;
}
