//! Health probes. HTTP: a GET over a socket the holder opens inside the service's network
//! namespace (to its 127.0.0.1, so a loopback-only service is probed too); healthy on a 2xx
//! or 3xx status within the timeout. Command: `cagerun exec SVC -- CMD` (the service's
//! namespaces, user and filter); healthy when it exits 0 within the timeout.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::holder_client::Holder;

pub async fn http_probe(
    holder: Arc<Holder>,
    netns_fd: i32,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<()> {
    let path = path.to_string();
    tokio::time::timeout(timeout, async move {
        let fd = tokio::task::spawn_blocking(move || holder.connect(netns_fd, port)).await??;
        let mut s = tokio::net::TcpStream::from_std(std::net::TcpStream::from(fd))?;
        s.writable().await?;
        if let Some(e) = s.take_error()? {
            return Err(e).context("connecting");
        }
        s.write_all(
            format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: cagerun-health\r\n\r\n")
                .as_bytes(),
        )
        .await?;
        // The whole answer (bounded), so the server sees an orderly close, not a reset.
        let mut reply = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let m = s.read(&mut buf).await?;
            if m == 0 || reply.len() > 64 << 10 {
                break;
            }
            reply.extend_from_slice(&buf[..m]);
        }
        let (buf, n) = (&reply, reply.len());
        let line = String::from_utf8_lossy(&buf[..n]);
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if !(200..400).contains(&status) {
            bail!(
                "GET {path} answered {:?}",
                line.lines().next().unwrap_or("")
            );
        }
        Ok(())
    })
    .await
    .context("timed out")?
}

pub async fn command_probe(
    config: &std::path::Path,
    service: &str,
    command: &[String],
    timeout: Duration,
) -> Result<()> {
    let mut child = tokio::process::Command::new(crate::host::self_exe()?)
        .arg("exec")
        .arg("--config")
        .arg(config)
        .arg(service)
        .arg("--")
        .args(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("starting the health command")?;
    let mut stderr = child.stderr.take();
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => s?,
        Err(_) => bail!("{} timed out", command.join(" ")),
    };
    if status.success() {
        return Ok(());
    }
    let mut said = String::new();
    if let Some(e) = stderr.as_mut() {
        let _ = e.read_to_string(&mut said).await;
    }
    let last = said
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    bail!(
        "{} exited {}{}",
        command.join(" "),
        status.code().unwrap_or(-1),
        if last.is_empty() {
            String::new()
        } else {
            format!(": {last}")
        }
    )
}
