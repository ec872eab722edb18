use std::process::ExitCode;

use clap::Parser;
use port_tracer::{live, replay, top};

mod cli;

use cli::{Cli, Cmd};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.cmd.is_none() && cli.live.ring.rotate.is_some() && cli.live.record.is_none() {
        use clap::CommandFactory;
        Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--rotate needs --record PATH (the directory of the ring of trace files)",
            )
            .exit();
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
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("port-tracer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
