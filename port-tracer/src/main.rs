use std::process::ExitCode;

use clap::Parser;
use port_tracer::{
    cli::{Cli, Cmd},
    collector, record, replay,
};

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        None => runtime.block_on(collector::run(cli.live)),
        Some(Cmd::Record(args)) => runtime.block_on(record::run(args)),
        Some(Cmd::Report(args)) => replay::run(args),
        Some(Cmd::Export(args)) => replay::run(args.as_report()),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("port-tracer: {e:#}");
            ExitCode::FAILURE
        }
    }
}
