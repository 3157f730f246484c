//! `cagerun login REGISTRY` and `cagerun logout REGISTRY`: credentials for private images,
//! checked against the registry before they are filed (see `cage_runtime::credentials`).

use std::io::{IsTerminal, Read, Write};

use anyhow::{bail, Context, Result};
use cage_runtime::credentials;
use clap::Args;

/// The longest password (or token) read from stdin.
const MAX_PASSWORD: u64 = 64 << 10;

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// The registry, HOST[:PORT] (e.g. ghcr.io, docker.io, localhost:5000).
    registry: String,
    /// The user name (asked for on a terminal when not given).
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password (or token) from stdin instead of asking on the terminal.
    #[arg(long)]
    password_stdin: bool,
    /// Speak plain HTTP to this registry (host[:port]); this machine's own registries
    /// (localhost, 127.0.0.0/8) always are.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    insecure: Vec<String>,
}

#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// The registry, HOST[:PORT].
    registry: String,
}

pub fn login(args: LoginArgs) -> Result<()> {
    let username = match args.username {
        Some(u) => u,
        None if args.password_stdin => {
            bail!("--password-stdin needs the user name: add -u USER")
        }
        None => ask_username()?,
    };
    if username.is_empty() || username.contains(':') {
        bail!("the user name must not be empty or contain ':'");
    }
    let (password, from) = if args.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .take(MAX_PASSWORD + 1)
            .read_to_string(&mut p)
            .context("reading the password from stdin")?;
        if p.len() as u64 > MAX_PASSWORD {
            bail!("the password on stdin is longer than {MAX_PASSWORD} bytes");
        }
        (
            p.trim_end_matches(['\n', '\r']).to_string(),
            "--password-stdin",
        )
    } else {
        let p = rpassword::prompt_password("Password: ")
            .context("asking for the password (no terminal?): pipe it in with --password-stdin")?;
        (p, "the password prompt")
    };
    if password.is_empty() {
        bail!("the password is empty");
    }
    let credentials = cage_runtime::credentials::Credentials { username, password };
    let file = credentials::login(&args.registry, credentials, from, &args.insecure)?;
    println!("Login Succeeded (credentials in {})", file.display());
    Ok(())
}

fn ask_username() -> Result<String> {
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the user name: give it with -u USER");
    }
    eprint!("Username: ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::stdin().lock().take(4096), &mut line)
        .context("reading the user name")?;
    Ok(line.trim().to_string())
}

pub fn logout(args: LogoutArgs) -> Result<()> {
    let file = credentials::logout(&args.registry)?;
    println!(
        "Removed login credentials for {} from {}",
        args.registry,
        file.display()
    );
    Ok(())
}
