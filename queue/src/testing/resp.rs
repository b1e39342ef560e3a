//! A minimal blocking RESP client, just enough for the harness to check readiness and
//! cluster state without depending on the `redis` crate's connection handling.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const IO_TIMEOUT: Duration = Duration::from_secs(2);

/// One reply (flat arrays of these for the sentinels' answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The text of a simple or bulk string.
    pub(super) fn text(&self) -> Option<&str> {
        match self {
            Reply::Simple(s) | Reply::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }

    /// The value of `field` in an array of alternating names and values (`SENTINEL master`).
    pub(super) fn field(&self, field: &str) -> Option<&str> {
        let Reply::Array(Some(items)) = self else {
            return None;
        };
        items
            .chunks(2)
            .find(|pair| pair[0].text() == Some(field))
            .and_then(|pair| pair.get(1)?.text())
    }
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Simple(s) => write!(f, "+{s}"),
            Reply::Error(s) => write!(f, "-{s}"),
            Reply::Integer(i) => write!(f, ":{i}"),
            Reply::Bulk(Some(s)) => write!(f, "{s:?}"),
            Reply::Bulk(None) | Reply::Array(None) => write!(f, "(nil)"),
            Reply::Array(Some(items)) => {
                let items: Vec<String> = items.iter().map(Reply::to_string).collect();
                write!(f, "[{}]", items.join(", "))
            }
        }
    }
}

/// A connection to one server on 127.0.0.1.
pub(super) struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub(super) fn open(port: u16) -> io::Result<Conn> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply. A server that closes the connection instead
    /// of answering (as `SHUTDOWN` does) yields `ErrorKind::UnexpectedEof`.
    pub(super) fn call(&mut self, args: &[&str]) -> io::Result<Reply> {
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        self.reader.get_mut().write_all(request.as_bytes())?;
        self.read_reply()
    }

    fn read_reply(&mut self) -> io::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_owned())),
            "-" => Ok(Reply::Error(rest.to_owned())),
            ":" => rest.parse().map(Reply::Integer).map_err(invalid),
            "$" => {
                let len: i64 = rest.parse().map_err(invalid)?;
                let Ok(len) = usize::try_from(len) else {
                    return Ok(Reply::Bulk(None));
                };
                let mut body = vec![0; len + 2];
                io::Read::read_exact(&mut self.reader, &mut body)?;
                body.truncate(len);
                Ok(Reply::Bulk(Some(
                    String::from_utf8_lossy(&body).into_owned(),
                )))
            }
            "*" => {
                let len: i64 = rest.parse().map_err(invalid)?;
                let Ok(len) = usize::try_from(len) else {
                    return Ok(Reply::Array(None));
                };
                let items = (0..len)
                    .map(|_| self.read_reply())
                    .collect::<io::Result<Vec<_>>>()?;
                Ok(Reply::Array(Some(items)))
            }
            _ => Err(invalid(format!("unsupported reply {line:?}"))),
        }
    }

    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let trimmed = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(trimmed);
        Ok(line)
    }
}

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// The value of `field` in an `INFO` or `CLUSTER INFO` reply (`field:value` lines).
pub(super) fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name == field).then(|| value.trim())
    })
}
