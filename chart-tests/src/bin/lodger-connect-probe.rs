//! `lodger-connect-probe SOCKET`: connect to a shim's control socket as whatever uid/gid this
//! process runs with, send one `status` request (shim/src/control.rs, one JSON line each way)
//! and print the reply. Exit 0 when a reply came, 3 when connect() was refused for permissions,
//! 1 otherwise. tests/socket.rs runs it with the node agent's identity.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: lodger-connect-probe SOCKET");
        return ExitCode::from(2);
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!("connect {path}: {e}");
            return ExitCode::from(3);
        }
        Err(e) => {
            eprintln!("connect {path}: {e}");
            return ExitCode::from(1);
        }
    };
    let timeout = Some(Duration::from_secs(10));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return ExitCode::from(1);
    }
    if let Err(e) = stream.write_all(b"{\"version\":1,\"op\":\"status\"}\n") {
        eprintln!("write: {e}");
        return ExitCode::from(1);
    }
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(n) if n > 0 => {
            print!("{reply}");
            ExitCode::SUCCESS
        }
        Ok(_) => {
            eprintln!("no reply");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("read: {e}");
            ExitCode::from(1)
        }
    }
}
