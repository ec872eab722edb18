use std::{io::Write, process::ExitCode};

use port_tracer::{live, replay, top};

mod cli;

use cli::{Cmd, Invocation};

fn main() -> ExitCode {
    let cli = match cli::parse() {
        Invocation::Cli(cli) => *cli,
        Invocation::ManPages(dir) => return exit(cli::write_man_pages(&dir)),
    };
    // Needs no runtime (and no kernel).
    if let Some(Cmd::Completions(args)) = &cli.cmd {
        // Made whole first: clap's generator panics on a failed write, and a closed pipe
        // (`| head`) ends quietly.
        let mut script = Vec::new();
        cli::completions(args.shell, &mut script);
        return match std::io::stdout().lock().write_all(&script) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                exit(Err(anyhow::Error::new(e).context("writing the completions")))
            }
            _ => ExitCode::SUCCESS,
        };
    }
    if cli.cmd.is_none() && cli.live.ring.rotate.is_some() && cli.live.record.is_none() {
        eprintln!("error: --rotate needs --record PATH (the directory of the ring of trace files)");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("port-tracer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = match cli.cmd {
        None => runtime.block_on(live::run(cli.live.config())),
        Some(Cmd::Record(args)) => runtime.block_on(live::record::run(args.config())),
        Some(Cmd::Report(args)) => replay::run(args.config()),
        Some(Cmd::Export(args)) => replay::run(args.config()),
        Some(Cmd::Top(args)) => runtime.block_on(top::run(args.config())),
        Some(Cmd::Completions(_)) => unreachable!("handled above"),
    };
    exit(done)
}

fn exit(done: anyhow::Result<()>) -> ExitCode {
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("port-tracer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
