//! Host-scope IPAM: hands out addresses of the node's pod CIDRs, one per owner,
//! and takes them back. IPv4 is required; an IPv6 pool is accepted in the model.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
};

use ipnet::{IpNet, Ipv4Net};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("pod CIDR {cidr} is exhausted ({used} addresses in use): release pods or give the node a larger pod CIDR")]
    Exhausted { cidr: IpNet, used: usize },
    #[error("pod CIDR {0} is too small: it needs room for the router address and at least one pod (use a /30 or larger)")]
    TooSmall(IpNet),
    #[error("address {ip} is not in pod CIDR {cidr}")]
    OutOfRange { ip: IpAddr, cidr: IpNet },
    #[error("address {ip} is already allocated to {owner}")]
    InUse { ip: IpAddr, owner: String },
}

/// One address pool.
#[derive(Debug, Clone)]
pub struct Pool {
    cidr: IpNet,
    router: IpAddr,
    allocated: BTreeMap<IpAddr, String>,
}

impl Pool {
    /// A pool over `cidr`; its first host address is the node's router (gateway) address.
    pub fn new(cidr: IpNet) -> Result<Self, IpamError> {
        let cidr = cidr.trunc();
        let mut hosts = cidr.hosts();
        let router = hosts.next().ok_or(IpamError::TooSmall(cidr))?;
        hosts.next().ok_or(IpamError::TooSmall(cidr))?;
        Ok(Self {
            cidr,
            router,
            allocated: BTreeMap::new(),
        })
    }

    pub fn cidr(&self) -> IpNet {
        self.cidr
    }

    pub fn router(&self) -> IpAddr {
        self.router
    }

    /// Allocates an address for `owner`; asking twice for the same owner returns the same address.
    pub fn allocate(&mut self, owner: &str) -> Result<IpAddr, IpamError> {
        if let Some((ip, _)) = self.allocated.iter().find(|(_, o)| o.as_str() == owner) {
            return Ok(*ip);
        }
        let ip = self
            .cidr
            .hosts()
            .find(|ip| *ip != self.router && !self.allocated.contains_key(ip))
            .ok_or(IpamError::Exhausted {
                cidr: self.cidr,
                used: self.allocated.len(),
            })?;
        self.allocated.insert(ip, owner.to_string());
        Ok(ip)
    }

    /// Marks a specific address as owned (restoring state after a restart).
    pub fn allocate_specific(&mut self, ip: IpAddr, owner: &str) -> Result<(), IpamError> {
        if !self.cidr.contains(&ip) || ip == self.router {
            return Err(IpamError::OutOfRange {
                ip,
                cidr: self.cidr,
            });
        }
        match self.allocated.get(&ip) {
            Some(o) if o != owner => Err(IpamError::InUse {
                ip,
                owner: o.clone(),
            }),
            _ => {
                self.allocated.insert(ip, owner.to_string());
                Ok(())
            }
        }
    }

    /// Releases an address; returns whether it was allocated.
    pub fn release(&mut self, ip: IpAddr) -> bool {
        self.allocated.remove(&ip).is_some()
    }

    /// Releases whatever `owner` holds; returns the addresses released.
    pub fn release_owner(&mut self, owner: &str) -> Vec<IpAddr> {
        let ips: Vec<IpAddr> = self
            .allocated
            .iter()
            .filter(|(_, o)| o.as_str() == owner)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &ips {
            self.allocated.remove(ip);
        }
        ips
    }

    pub fn owner_of(&self, ip: IpAddr) -> Option<&str> {
        self.allocated.get(&ip).map(String::as_str)
    }

    pub fn allocations(&self) -> impl Iterator<Item = (&IpAddr, &String)> {
        self.allocated.iter()
    }

    pub fn used(&self) -> usize {
        self.allocated.len()
    }
}

/// The node's pools.
#[derive(Debug, Clone)]
pub struct Ipam {
    pub v4: Pool,
    pub v6: Option<Pool>,
}

impl Ipam {
    pub fn new(v4: Ipv4Net, v6: Option<ipnet::Ipv6Net>) -> Result<Self, IpamError> {
        Ok(Self {
            v4: Pool::new(IpNet::V4(v4))?,
            v6: v6.map(|c| Pool::new(IpNet::V6(c))).transpose()?,
        })
    }

    pub fn router_v4(&self) -> Ipv4Addr {
        match self.v4.router() {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!("the v4 pool is built from an Ipv4Net"),
        }
    }

    pub fn pool_for(&mut self, ip: IpAddr) -> &mut Pool {
        match (ip, self.v6.as_mut()) {
            (IpAddr::V6(_), Some(p)) => p,
            _ => &mut self.v4,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(c: &str) -> Pool {
        Pool::new(c.parse().unwrap()).unwrap()
    }

    #[test]
    fn first_host_is_router_and_never_handed_out() {
        let mut p = pool("10.0.0.0/24");
        assert_eq!(p.router(), "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(
            p.allocate("a").unwrap(),
            "10.0.0.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            p.allocate("b").unwrap(),
            "10.0.0.3".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn same_owner_gets_same_address() {
        let mut p = pool("10.0.0.0/24");
        let a = p.allocate("ctr:eth0").unwrap();
        assert_eq!(p.allocate("ctr:eth0").unwrap(), a);
        assert_eq!(p.used(), 1);
    }

    #[test]
    fn exhaustion_and_release() {
        // /29: hosts .1-.6, .1 is the router: 5 pods.
        let mut p = pool("10.0.0.0/29");
        for i in 0..5 {
            p.allocate(&format!("p{i}")).unwrap();
        }
        let err = p.allocate("p5").unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { used: 5, .. }));
        assert!(err.to_string().contains("exhausted"), "{err}");
        let ip = p.release_owner("p2");
        assert_eq!(ip.len(), 1);
        assert_eq!(
            p.allocate("p5").unwrap(),
            ip[0],
            "a released address is reused"
        );
        assert!(p.release(ip[0]));
        assert!(
            !p.release(ip[0]),
            "releasing twice reports nothing released"
        );
    }

    #[test]
    fn too_small_cidr_is_refused() {
        assert!(matches!(
            Pool::new("10.0.0.0/32".parse().unwrap()),
            Err(IpamError::TooSmall(_))
        ));
        assert!(Pool::new("10.0.0.0/30".parse().unwrap()).is_ok());
    }

    #[test]
    fn restore_specific_checks_range_and_owner() {
        let mut p = pool("10.0.0.0/24");
        p.allocate_specific("10.0.0.9".parse().unwrap(), "x")
            .unwrap();
        assert_eq!(p.owner_of("10.0.0.9".parse().unwrap()), Some("x"));
        assert!(matches!(
            p.allocate_specific("10.0.0.9".parse().unwrap(), "y"),
            Err(IpamError::InUse { .. })
        ));
        assert!(matches!(
            p.allocate_specific("10.9.0.9".parse().unwrap(), "y"),
            Err(IpamError::OutOfRange { .. })
        ));
        assert_ne!(
            p.allocate("z").unwrap(),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv6_pool_is_accepted() {
        let mut ipam = Ipam::new(
            "10.0.0.0/24".parse().unwrap(),
            Some("fd00::/120".parse().unwrap()),
        )
        .unwrap();
        let v6 = ipam.v6.as_mut().unwrap().allocate("a").unwrap();
        assert!(v6.is_ipv6());
        assert_eq!(ipam.router_v4(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
    }
}
