//! Where the system may send requests that users aim (webhook endpoints): only to globally
//! routable addresses, unless an allow-list names a network. Users choose webhook URLs; without
//! this policy they could make the notifier POST to the cloud metadata service
//! (`169.254.169.254`), the CQL store on loopback or anything on the private network (SSRF).
//!
//! The classification is pure ([`special_range`]); the notifier applies it to every address a
//! name *resolves to* at delivery time, connecting only to addresses it checked (so a name that
//! resolves to a public address when registered and to a private one later gains nothing), and
//! ingest applies it at registration to URLs whose host is a literal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// The allow-list flag, shared by ingest (registration) and the notifier (delivery).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct EgressArgs {
    /// Networks webhooks may reach although they are not globally routable (comma-separated
    /// CIDR, e.g. `127.0.0.0/8,::1/128` for a local stack). Empty: only public addresses.
    #[arg(long = "webhook-allow-networks", env = "WEBHOOK_ALLOW_NETWORKS",
          value_delimiter = ',', value_parser = parse_network)]
    pub webhook_allow_networks: Vec<IpNet>,
}

/// What the local stack and the tests allow besides public addresses: loopback.
pub const LOCAL_STACK_NETWORKS: &str = "127.0.0.0/8,::1/128";

impl EgressArgs {
    /// [`LOCAL_STACK_NETWORKS`] allowed: receivers on this machine.
    pub fn loopback() -> Self {
        EgressArgs {
            webhook_allow_networks: LOCAL_STACK_NETWORKS
                .split(',')
                .filter_map(|net| parse_network(net).ok())
                .collect(),
        }
    }

    pub fn policy(&self) -> EgressPolicy {
        EgressPolicy::allowing(self.webhook_allow_networks.clone())
    }
}

/// A network in CIDR form, or one address.
pub fn parse_network(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{raw:?} is not a network in CIDR form (e.g. 10.0.0.0/8)"))
}

/// An address the policy refuses, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{addr} is not a public address ({range}); webhooks go there only if WEBHOOK_ALLOW_NETWORKS \
     lists it"
)]
pub struct EgressRefused {
    pub addr: IpAddr,
    pub range: &'static str,
}

/// Which destinations are allowed: globally routable addresses, plus the allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl EgressPolicy {
    /// Public addresses only.
    pub fn public_only() -> Self {
        EgressPolicy::default()
    }

    pub fn allowing(allow: Vec<IpNet>) -> Self {
        EgressPolicy { allow }
    }

    /// Whether a request may go to `addr`.
    pub fn check(&self, addr: IpAddr) -> Result<(), EgressRefused> {
        let Some(range) = special_range(addr) else {
            return Ok(());
        };
        if self.allow.iter().any(|net| net.contains(&addr)) {
            return Ok(());
        }
        Err(EgressRefused { addr, range })
    }
}

/// The special-purpose range `addr` is in (IANA's IPv4 and IPv6 special-purpose registries,
/// plus multicast and the forms that embed or translate an IPv4 address), or `None` for a
/// globally routable address.
pub fn special_range(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => first_range(V4_RANGES, |net, prefix| in_v4(v4, net, prefix)),
        IpAddr::V6(v6) => first_range(V6_RANGES, |net, prefix| in_v6(v6, net, prefix)),
    }
}

/// The name of the first range of `ranges` that `contains` says holds the address.
fn first_range<N: Copy>(
    ranges: &[(N, u32, &'static str)],
    contains: impl Fn(N, u32) -> bool,
) -> Option<&'static str> {
    ranges
        .iter()
        .find(|(net, prefix, _)| contains(*net, *prefix))
        .map(|(_, _, name)| *name)
}

fn in_v4(addr: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(addr) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(addr: Ipv6Addr, net: [u16; 8], prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    let [a, b, c, d, e, f, g, h] = net;
    u128::from(addr) & mask == u128::from(Ipv6Addr::new(a, b, c, d, e, f, g, h)) & mask
}

const V4_RANGES: &[([u8; 4], u32, &str)] = &[
    ([0, 0, 0, 0], 8, "\"this network\" 0.0.0.0/8"),
    ([10, 0, 0, 0], 8, "private 10.0.0.0/8"),
    ([100, 64, 0, 0], 10, "carrier-grade NAT 100.64.0.0/10"),
    ([127, 0, 0, 0], 8, "loopback 127.0.0.0/8"),
    ([169, 254, 0, 0], 16, "link-local 169.254.0.0/16"),
    ([172, 16, 0, 0], 12, "private 172.16.0.0/12"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments 192.0.0.0/24"),
    ([192, 0, 2, 0], 24, "documentation 192.0.2.0/24"),
    ([192, 31, 196, 0], 24, "AS112 192.31.196.0/24"),
    ([192, 52, 193, 0], 24, "AMT 192.52.193.0/24"),
    ([192, 88, 99, 0], 24, "6to4 relay anycast 192.88.99.0/24"),
    ([192, 168, 0, 0], 16, "private 192.168.0.0/16"),
    (
        [192, 175, 48, 0],
        24,
        "direct delegation AS112 192.175.48.0/24",
    ),
    ([198, 18, 0, 0], 15, "benchmarking 198.18.0.0/15"),
    ([198, 51, 100, 0], 24, "documentation 198.51.100.0/24"),
    ([203, 0, 113, 0], 24, "documentation 203.0.113.0/24"),
    ([224, 0, 0, 0], 4, "multicast 224.0.0.0/4"),
    ([240, 0, 0, 0], 4, "reserved 240.0.0.0/4 (and broadcast)"),
];

#[rustfmt::skip] // one range per line
const V6_RANGES: &[([u16; 8], u32, &str)] = &[
    ([0, 0, 0, 0, 0, 0, 0, 0], 128, "unspecified ::"),
    ([0, 0, 0, 0, 0, 0, 0, 1], 128, "loopback ::1"),
    ([0, 0, 0, 0, 0, 0xffff, 0, 0], 96, "IPv4-mapped ::ffff:0:0/96"),
    ([0, 0, 0, 0, 0, 0, 0, 0], 96, "IPv4-compatible ::/96"),
    ([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96, "NAT64 64:ff9b::/96"),
    ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48, "local NAT64 64:ff9b:1::/48"),
    ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard 100::/64"),
    ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23, "IETF protocol assignments 2001::/23 (Teredo)"),
    ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32, "documentation 2001:db8::/32"),
    ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, "6to4 2002::/16"),
    ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20, "documentation 3fff::/20"),
    ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16, "segment routing 5f00::/16"),
    ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local fc00::/7"),
    ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local fe80::/10"),
    ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local fec0::/10"),
    ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast ff00::/8"),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn every_non_public_form_is_refused() {
        for addr in [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.255.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "64:ff9b:1::1",
            "100::1",
            "2001::1",
            "2001:db8::1",
            "2002:a9fe:a9fe::1",
            "3fff::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
        ] {
            let refused = EgressPolicy::public_only().check(ip(addr));
            assert!(refused.is_err(), "{addr} passed");
        }
    }

    #[test]
    fn public_addresses_pass() {
        for addr in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.1",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "2001:4860::8888",
        ] {
            assert_eq!(
                EgressPolicy::public_only().check(ip(addr)),
                Ok(()),
                "{addr}"
            );
        }
    }

    #[test]
    fn the_allow_list_opens_exactly_its_networks() {
        let args = EgressArgs {
            webhook_allow_networks: vec![
                parse_network("127.0.0.0/8").unwrap(),
                parse_network("::1").unwrap(),
            ],
        };
        let policy = args.policy();
        assert_eq!(policy.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.check(ip("::1")), Ok(()));
        let refused = policy.check(ip("169.254.169.254")).unwrap_err();
        assert_eq!(refused.range, "link-local 169.254.0.0/16");
        assert!(
            refused.to_string().contains("WEBHOOK_ALLOW_NETWORKS"),
            "{refused}"
        );
        assert_eq!(EgressArgs::loopback().policy(), policy);
        assert!(parse_network("not a net").is_err());
        assert!(parse_network("10.0.0.0/33").is_err());
    }
}
