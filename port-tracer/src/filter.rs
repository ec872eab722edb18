//! Which sockets the user wants to see.

use crate::{
    event::{Endpoints, Proto, Task},
    lifetime::OutputRef,
};

/// Every field left `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub ports: Option<(u16, u16)>,
    pub proto: Option<Proto>,
    pub netns: Option<u32>,
}

impl Filter {
    pub fn matches(&self, ends: &Endpoints, task: &Task) -> bool {
        self.pid.is_none_or(|p| p == task.pid)
            && self.comm.as_deref().is_none_or(|c| c == task.comm.as_str())
            && self
                .ports
                .is_none_or(|(lo, hi)| (lo..=hi).contains(&ends.lport))
            && self.proto.is_none_or(|p| p == ends.proto)
            && self.netns.is_none_or(|n| n == ends.netns)
    }

    /// Outputs are attributed to their socket's owner, so a filter by process also keeps
    /// the releases and TIME_WAITs the kernel reports from other contexts.
    pub fn matches_output(&self, o: OutputRef<'_>) -> bool {
        match o {
            OutputRef::Event(ev) => self.matches(&ev.ends, &ev.task),
            OutputRef::Lifetime(lt) => self.matches(&lt.ends, &lt.owner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{event::Comm, testing::ends};

    #[test]
    fn filters_match_what_they_name() {
        let task = Task {
            pid: 5,
            comm: Comm::new("curl"),
            ..Default::default()
        };
        let f = Filter {
            ports: Some((100, 200)),
            ..Default::default()
        };
        assert!(f.matches(&ends(150), &task));
        assert!(!f.matches(&ends(201), &task));
        let f = Filter {
            pid: Some(6),
            ..Default::default()
        };
        assert!(!f.matches(&ends(1), &task));
        let f = Filter {
            comm: Some("curl".into()),
            proto: Some(Proto::Tcp),
            netns: Some(7),
            ..Default::default()
        };
        assert!(f.matches(&ends(1), &task));
        let f = Filter {
            proto: Some(Proto::Udp),
            ..Default::default()
        };
        assert!(!f.matches(&ends(1), &task));
    }
}
