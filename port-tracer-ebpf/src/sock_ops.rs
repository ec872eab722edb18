//! TCP listen and connect on the cgroup tier (a sockops program at the cgroup v2 root).
//!
//! `TCP_CONNECT_CB` runs at the top of `tcp_connect()`, after `inet_hash_connect` chose the
//! port; `TCP_LISTEN_CB` after `listen()` took (or kept) its port. Sockops programs may not
//! ask who the current task is, so who connects or listens is taken earlier, at the state
//! change that starts it (`tcp_state`), and kept in `CONNECTING` until here. (A per-CPU
//! slot would save the map entry, but a connecting thread can be preempted and move CPUs
//! in between: seen in the storm test.)

use aya_ebpf::{macros::sock_ops, programs::SockOpsContext};
use port_tracer_common::lost;

use crate::{connect, emit::count_lost, kernel::plain_address};

const BPF_SOCK_OPS_TCP_CONNECT_CB: u32 = 3;
const BPF_SOCK_OPS_TCP_LISTEN_CB: u32 = 11;

#[sock_ops]
pub fn tcp_sock_ops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_TCP_LISTEN_CB {
        return 1;
    }
    let Ok(sk) = plain_address(unsafe { (*ctx.ops).__bindgen_anon_2.sk } as u64) else {
        count_lost(lost::READ_ERROR);
        return 1;
    };
    if op == BPF_SOCK_OPS_TCP_CONNECT_CB {
        connect::connect_chose(sk);
    } else {
        connect::finish_listen(sk);
    }
    1
}
