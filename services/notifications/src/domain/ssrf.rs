//! Which destinations a webhook may go to (SSRF protection, ADR 0026).
//!
//! A URL must be `https` (`http` only with `allow_http`). Every address its host resolves to must
//! be public: loopback, private (RFC 1918, unique local), link-local (the cloud metadata address
//! 169.254.169.254 included), carrier-grade NAT, unspecified, multicast, broadcast, documentation
//! and benchmarking ranges are refused, as are IPv4-mapped and NAT64 forms of them, unless an
//! allowlisted network contains the address. The check runs on the addresses the connection then
//! uses (see `crate::delivery`): DNS is resolved and pinned per attempt, so a name that later
//! resolves elsewhere (DNS rebinding) is checked again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A CIDR network, `10.0.0.0/8` or `::1/128`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `address/prefix` (a bare address is one host).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (text, None),
        };
        let address: IpAddr = address
            .parse()
            .map_err(|error| format!("{text:?} is not a network: {error}"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0-{max}"))?,
            None => max,
        };
        Ok(Self { address, prefix })
    }

    /// Whether `address` is in the network.
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.address, address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// What the service may deliver to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SsrfPolicy {
    /// Accept `http://` URLs.
    pub allow_http: bool,
    /// Networks allowed although not public.
    pub allowed: Vec<Network>,
}

/// Why a destination is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not http(s), or http where it is not allowed.
    #[error("{0}")]
    Scheme(String),
    /// The address is not public and not allowlisted.
    #[error("{address} is a {kind} address, which webhooks may not reach")]
    Address {
        /// The address.
        address: IpAddr,
        /// What kind it is.
        kind: &'static str,
    },
}

impl SsrfPolicy {
    /// Checks the scheme of a URL.
    pub fn check_scheme(&self, scheme: &str) -> Result<(), Refusal> {
        match scheme {
            "https" => Ok(()),
            "http" if self.allow_http => Ok(()),
            "http" => Err(Refusal::Scheme(
                "must be https (plain http is not allowed here)".to_owned(),
            )),
            other => Err(Refusal::Scheme(format!("must be https, not {other}"))),
        }
    }

    /// Checks one resolved address.
    pub fn check_address(&self, address: IpAddr) -> Result<(), Refusal> {
        let Some(kind) = non_public(address) else {
            return Ok(());
        };
        if self.allowed.iter().any(|network| network.contains(address)) {
            return Ok(());
        }
        Err(Refusal::Address { address, kind })
    }
}

/// What kind of non-public address `address` is; `None` for a public one.
pub fn non_public(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => non_public_v4(v4),
        IpAddr::V6(v6) => non_public_v6(v6),
    }
}

fn non_public_v4(address: Ipv4Addr) -> Option<&'static str> {
    let octets = address.octets();
    let kind = if address.is_loopback() {
        "loopback"
    } else if address.is_private() {
        "private"
    } else if address.is_link_local() {
        // 169.254.169.254 is the metadata service of most clouds.
        "link-local (metadata)"
    } else if address.is_unspecified() || octets[0] == 0 {
        "unspecified"
    } else if address.is_broadcast() {
        "broadcast"
    } else if address.is_multicast() || octets[0] >= 240 {
        "multicast or reserved"
    } else if octets[0] == 100 && (octets[1] & 0xc0) == 64 {
        "shared (carrier-grade NAT)"
    } else if octets[0] == 198 && (octets[1] & 0xfe) == 18 {
        "benchmarking"
    } else if address.is_documentation() || (octets[0] == 192 && octets[1] == 0 && octets[2] == 0) {
        "documentation or protocol-assignment"
    } else {
        return None;
    };
    Some(kind)
}

fn non_public_v6(address: Ipv6Addr) -> Option<&'static str> {
    if let Some(v4) = address.to_ipv4_mapped() {
        return non_public_v4(v4);
    }
    let segments = address.segments();
    // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
    if segments[0] == 0x64 && segments[1] == 0xff9b && segments[2..6] == [0, 0, 0, 0] {
        let [a, b] = segments[6].to_be_bytes();
        let [c, d] = segments[7].to_be_bytes();
        return non_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    let kind = if address.is_loopback() {
        "loopback"
    } else if address.is_unspecified() {
        "unspecified"
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        "private (unique local)"
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        "link-local"
    } else if address.is_multicast() {
        "multicast"
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        "documentation"
    } else {
        return None;
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(policy: &SsrfPolicy, address: &str) -> bool {
        policy.check_address(address.parse().expect("address")).is_err()
    }

    #[test]
    fn loopback_private_link_local_and_metadata_are_refused_by_default() {
        let policy = SsrfPolicy::default();
        for address in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(refused(&policy, address), "{address} is refused");
        }
        for address in ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"] {
            assert!(!refused(&policy, address), "{address} is public");
        }
    }

    #[test]
    fn an_allowlisted_network_is_allowed_and_nothing_else() {
        let policy = SsrfPolicy {
            allow_http: true,
            allowed: vec![
                Network::parse("127.0.0.0/8").expect("cidr"),
                Network::parse("::1").expect("host"),
            ],
        };
        assert!(!refused(&policy, "127.0.0.1"));
        assert!(!refused(&policy, "127.9.9.9"));
        assert!(!refused(&policy, "::1"));
        assert!(refused(&policy, "10.0.0.1"));
        assert!(refused(&policy, "169.254.169.254"));
    }

    #[test]
    fn schemes() {
        let strict = SsrfPolicy::default();
        assert!(strict.check_scheme("https").is_ok());
        assert!(strict.check_scheme("http").is_err());
        assert!(strict.check_scheme("ftp").is_err());
        let local = SsrfPolicy {
            allow_http: true,
            allowed: Vec::new(),
        };
        assert!(local.check_scheme("http").is_ok());
    }

    #[test]
    fn networks_parse_and_reject_bad_prefixes() {
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("nonsense").is_err());
        assert!(
            Network::parse("::/0")
                .expect("all")
                .contains("2001::1".parse().expect("v6"))
        );
    }
}
