//! The benchmark workload (`cargo xtask bench`): a loopback TCP connect/accept/close storm or
//! a UDP bind/close flood, at a fixed count or for a fixed time, as fast as it goes.
//!
//! Prints one JSON line: `{"pid":..,"ops":..,"seconds":..,"rate":..}`. A separate release
//! binary, so its speed does not depend on how xtask was built, and the tracers see it as a
//! process of its own (`comm` "storm").

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// connect + accept + close, both ends, one connection at a time.
    Tcp,
    /// socket + bind(127.0.0.1:0) + close.
    Udp,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Close {
    /// SO_LINGER 0: RST, no TIME_WAIT (the peers' storm of issue 5).
    Rst,
    /// Orderly close by the client: its port is held in TIME_WAIT.
    Fin,
}

#[derive(Parser)]
#[command(name = "storm", about = "port-tracer benchmark workload")]
struct Args {
    #[arg(value_enum)]
    workload: Workload,
    /// Operations (connections or sockets) per thread.
    #[arg(long, default_value_t = 20_000)]
    count: u64,
    /// Run for this many seconds instead of --count operations.
    #[arg(long)]
    seconds: Option<f64>,
    /// Threads, each doing --count operations.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// TCP: the listener's port on 127.0.0.1 (0: any).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// TCP: how the client closes.
    #[arg(long, value_enum, default_value_t = Close::Rst)]
    close: Close,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let listener = match args.workload {
        Workload::Tcp => Some(
            TcpListener::bind((Ipv4Addr::LOCALHOST, args.port))
                .with_context(|| format!("binding the listener to 127.0.0.1:{}", args.port))?,
        ),
        Workload::Udp => None,
    };
    let deadline = args.seconds.map(Duration::from_secs_f64);
    let start = Instant::now();
    let ops: u64 = std::thread::scope(|s| -> Result<u64> {
        let threads: Vec<_> = (0..args.threads.max(1))
            .map(|_| {
                let listener = listener.as_ref();
                s.spawn(move || -> Result<u64> {
                    let mut done = 0;
                    while match deadline {
                        Some(d) => done % 64 != 0 || start.elapsed() < d,
                        None => done < args.count,
                    } {
                        match listener {
                            Some(l) => tcp_once(l, args.close)?,
                            None => udp_once()?,
                        }
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("storm thread panicked"))
            .sum()
    })?;
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"pid\":{},\"ops\":{ops},\"seconds\":{seconds:.6},\"rate\":{:.1}}}",
        std::process::id(),
        ops as f64 / seconds
    );
    Ok(())
}

fn tcp_once(listener: &TcpListener, close: Close) -> Result<()> {
    let addr: SocketAddr = listener.local_addr()?;
    let client = loop {
        match TcpStream::connect(addr) {
            Ok(c) => break c,
            // FIN storms can run the ephemeral range dry while TIME_WAIT holds it.
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => return Err(e).context("connect"),
        }
    };
    let (accepted, _) = loop {
        match listener.accept() {
            Ok(a) => break a,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("accept"),
        }
    };
    match close {
        Close::Rst => {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: a valid fd and a linger struct of the size given.
            let rc = unsafe {
                libc::setsockopt(
                    client.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                bail!("SO_LINGER: {}", std::io::Error::last_os_error());
            }
            drop(client);
            drop(accepted);
        }
        Close::Fin => {
            // Client first: the active closer is the one that waits in TIME_WAIT.
            drop(client);
            drop(accepted);
        }
    }
    Ok(())
}

fn udp_once() -> Result<()> {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("UDP bind")?;
    Ok(())
}
