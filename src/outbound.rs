//! Outbound HTTP: the one client every request this server makes to someone else's address
//! goes through (push gateways, URL previews, later federation and appservices).
//!
//! It refuses private, loopback, link-local and other non-public addresses (SSRF), unless
//! the configuration allows a range (`outbound.allowed_ip_ranges`). The check sits where
//! every path passes: in the DNS resolver (a name that resolves to a refused address fails
//! to connect, so DNS rebinding gains nothing) and, for URLs with an IP literal (which skip
//! the resolver), in [`Outbound::check_url`] before the request and in the redirect policy
//! for every hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde::{Deserialize, Serialize};

/// `[outbound]` in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutboundConfig {
    /// Address ranges (CIDR, e.g. `"127.0.0.1/32"`, `"10.0.0.0/8"`) that outbound requests
    /// may reach although they are not public. Empty by default: only public addresses.
    pub allowed_ip_ranges: Vec<String>,
    /// Whole-request timeout of outbound requests, in seconds.
    pub timeout_secs: u64,
    /// Redirects followed per request (each hop is checked like the first).
    pub max_redirects: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        Self { allowed_ip_ranges: Vec::new(), timeout_secs: 30, max_redirects: 5 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    #[error("invalid outbound.allowed_ip_ranges entry {0:?}")]
    BadRange(String),
    #[error("URL {0:?} is not an http(s) URL with a host")]
    BadUrl(String),
    #[error("address {0} is not public and not allowed by outbound.allowed_ip_ranges")]
    Refused(IpAddr),
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// Which addresses outbound requests may reach.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    pub fn new(config: &OutboundConfig) -> Result<Self, OutboundError> {
        let allowed = config
            .allowed_ip_ranges
            .iter()
            .map(|r| {
                r.parse::<IpNet>()
                    .or_else(|_| r.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| OutboundError::BadRange(r.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { allowed })
    }

    /// Whether a request may connect to `ip`.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        is_public(ip) || self.allowed.iter().any(|net| net.contains(&ip))
    }

    pub fn check(&self, ip: IpAddr) -> Result<(), OutboundError> {
        if self.permits(ip) { Ok(()) } else { Err(OutboundError::Refused(ip)) }
    }
}

/// An IPv4 address mapped into IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Globally routable unicast: not loopback, private, link-local, shared (CGNAT),
/// documentation, benchmarking, multicast, broadcast, unspecified or reserved.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4() {
        // IPv4-compatible (::a.b.c.d) addresses, and NAT64 (64:ff9b::/96) below.
        if s[0..6] == [0, 0, 0, 0, 0, 0] || s[0..6] == [0, 0, 0, 0, 0, 0xffff] {
            return is_public_v4(v4) && !ip.is_unspecified() && !ip.is_loopback();
        }
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return is_public_v4(v4);
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated) fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] < 0x0200) // IETF protocol assignments (Teredo, ORCHID, …)
        || s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only 100::/64
}

/// The DNS resolver of the outbound client: the system resolver, with the refused
/// addresses removed; a name with no address left fails.
struct FilteringResolver {
    policy: Arc<AddressPolicy>,
}

impl Resolve for FilteringResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(Box::new(RefusedHost(host)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// The resolver's answer for a name whose every address the policy refuses.
#[derive(Debug, thiserror::Error)]
#[error("{0}: no address outbound requests may reach (not public, not allowed)")]
pub struct RefusedHost(String);

/// Whether a request failed because the address policy refused where it led (a name
/// resolving only to refused addresses, a redirect to a refused IP literal).
pub fn is_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(err) = source {
        if err.downcast_ref::<RefusedHost>().is_some()
            || err
                .downcast_ref::<OutboundError>()
                .is_some_and(|e| matches!(e, OutboundError::Refused(_)))
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// The outbound HTTP client and its address policy.
#[derive(Clone)]
pub struct Outbound {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

impl Outbound {
    pub fn new(config: &OutboundConfig) -> Result<Self, OutboundError> {
        let policy = Arc::new(AddressPolicy::new(config)?);
        let redirect_policy = {
            let policy = policy.clone();
            let max = config.max_redirects;
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= max {
                    return attempt.error("too many redirects");
                }
                match check_url(&policy, attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(e) => attempt.error(e),
                }
            })
        };
        let client = reqwest::Client::builder()
            .user_agent(concat!("Axon/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(config.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(10))
            .redirect(redirect_policy)
            .dns_resolver(Arc::new(FilteringResolver { policy: policy.clone() }))
            .no_proxy()
            .build()
            .map_err(|e| OutboundError::Client(e.to_string()))?;
        Ok(Self { client, policy })
    }

    /// The client. Every request must first pass [`Outbound::check_url`].
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    pub fn policy(&self) -> &AddressPolicy {
        &self.policy
    }

    /// Refuses URLs that are not http(s) or whose host is an IP literal outside the policy
    /// (names are checked by the resolver, at connection time).
    pub fn check_url(&self, url: &url::Url) -> Result<(), OutboundError> {
        check_url(&self.policy, url)
    }
}

fn check_url(policy: &AddressPolicy, url: &url::Url) -> Result<(), OutboundError> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(OutboundError::BadUrl(url.to_string()));
    }
    match url.host() {
        Some(url::Host::Ipv4(ip)) => policy.check(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => policy.check(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => match d.parse::<IpAddr>() {
            Ok(ip) => policy.check(ip),
            Err(_) => Ok(()),
        },
        None => Err(OutboundError::BadUrl(url.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed: &[&str]) -> AddressPolicy {
        AddressPolicy::new(&OutboundConfig {
            allowed_ip_ranges: allowed.iter().map(|s| (*s).to_owned()).collect(),
            ..OutboundConfig::default()
        })
        .expect("valid ranges")
    }

    #[test]
    fn refuses_non_public_addresses() {
        let p = policy(&[]);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
            "2001:db8::1",
        ] {
            assert!(!p.permits(ip.parse().expect("ip")), "{ip} must be refused");
        }
        for ip in ["1.1.1.1", "8.8.8.8", "2606:4700:4700::1111", "::ffff:1.1.1.1"] {
            assert!(p.permits(ip.parse().expect("ip")), "{ip} is public");
        }
    }

    #[test]
    fn allowed_ranges_open_private_addresses() {
        let p = policy(&["127.0.0.1/32", "10.0.0.0/8", "::1"]);
        assert!(p.permits("127.0.0.1".parse().expect("ip")));
        assert!(p.permits("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(p.permits("10.9.9.9".parse().expect("ip")));
        assert!(p.permits("::1".parse().expect("ip")));
        assert!(!p.permits("127.0.0.2".parse().expect("ip")));
        assert!(!p.permits("192.168.0.1".parse().expect("ip")));
        assert!(
            AddressPolicy::new(&OutboundConfig {
                allowed_ip_ranges: vec!["not a range".into()],
                ..OutboundConfig::default()
            })
            .is_err()
        );
    }

    #[test]
    fn urls_with_refused_literals_fail_before_any_request() {
        let p = policy(&[]);
        let check = |u: &str| check_url(&p, &url::Url::parse(u).expect("url"));
        assert!(check("http://127.0.0.1:8080/x").is_err());
        assert!(check("http://[::1]/").is_err());
        assert!(check("http://0x7f.1/").is_err()); // the URL parser normalises it to 127.0.0.1
        assert!(check("ftp://example.org/").is_err());
        assert!(check("https://example.org/").is_ok());
        assert!(check("https://1.1.1.1/").is_ok());
    }

    #[tokio::test]
    async fn resolver_drops_refused_addresses() {
        let refused = FilteringResolver { policy: Arc::new(policy(&[])) };
        let Err(err) = refused.resolve("localhost".parse().expect("name")).await else {
            panic!("localhost must not resolve to an allowed address");
        };
        assert!(is_refused(&*err), "{err}");
        let allowed = FilteringResolver { policy: Arc::new(policy(&["127.0.0.0/8", "::1"])) };
        let addrs: Vec<_> =
            allowed.resolve("localhost".parse().expect("name")).await.expect("resolves").collect();
        assert!(!addrs.is_empty());
    }
}
