//! A minimal blocking RESP2 client: encode one command, parse one reply.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Deepest array nesting accepted from the server.
const MAX_DEPTH: usize = 16;
/// Largest bulk string or array length accepted from the server.
const MAX_LEN: i64 = 512 * 1024 * 1024;

/// One RESP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK` style simple string.
    Simple(String),
    /// `-ERR ...` error reply (the text after `-`).
    Error(String),
    /// `:42` integer reply.
    Integer(i64),
    /// `$n` bulk string.
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`: a missing value.
    Nil,
    /// `*n` array of replies.
    Array(Vec<RespValue>),
}

impl RespValue {
    /// The text of a simple string, or a bulk string that is valid UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Simple(s) => Some(s),
            Self::Bulk(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value of an integer reply.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements of an array reply.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Whether this is a nil reply.
    pub fn is_nil(&self) -> bool {
        matches!(self, Self::Nil)
    }

    /// Whether this is an error reply.
    pub fn is_error(&self) -> bool {
        matches!(self, Self::Error(_))
    }

    /// Encodes `args` as a RESP array of bulk strings (the request format).
    pub fn encode_command(args: &[&str]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    /// Reads exactly one reply from `r`.
    pub fn read_from(r: &mut impl BufRead) -> io::Result<RespValue> {
        read_value(r, 0)
    }

    /// Connects to `addr`, sends one command and returns its reply (5 s I/O timeout).
    pub fn request(addr: SocketAddr, args: &[&str]) -> io::Result<RespValue> {
        Self::request_as(addr, None, args)
    }

    /// Like [`RespValue::request`], authenticating first with `AUTH password` when given (an
    /// error reply to `AUTH` is returned as the reply).
    pub fn request_as(
        addr: SocketAddr,
        password: Option<&str>,
        args: &[&str],
    ) -> io::Result<RespValue> {
        Self::request_in(addr, password, None, args)
    }

    /// Like [`RespValue::request_as`], on database `db` (`SELECT db` first) when given. An
    /// error reply to `AUTH` or `SELECT` is returned as the reply.
    pub fn request_in(
        addr: SocketAddr,
        password: Option<&str>,
        db: Option<&str>,
        args: &[&str],
    ) -> io::Result<RespValue> {
        let timeout = Duration::from_secs(5);
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut reader = BufReader::new(&stream);
        let auth = password.map(|pw| ["AUTH", pw]);
        let select = db.map(|db| ["SELECT", db]);
        for prelude in auth.iter().chain(select.iter()) {
            (&stream).write_all(&Self::encode_command(prelude))?;
            let reply = Self::read_from(&mut reader)?;
            if reply.is_error() {
                return Ok(reply);
            }
        }
        (&stream).write_all(&Self::encode_command(args))?;
        Self::read_from(&mut reader)
    }
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_line(r: &mut impl BufRead) -> io::Result<String> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if !line.ends_with(b"\r\n") {
        return Err(if line.is_empty() {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed")
        } else {
            invalid("RESP line not terminated by CRLF")
        });
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| invalid("RESP line is not UTF-8"))
}

fn parse_len(s: &str) -> io::Result<i64> {
    let n: i64 = s
        .parse()
        .map_err(|_| invalid(format!("bad RESP length {s:?}")))?;
    if !(-1..=MAX_LEN).contains(&n) {
        return Err(invalid(format!("RESP length out of range: {n}")));
    }
    Ok(n)
}

fn read_value(r: &mut impl BufRead, depth: usize) -> io::Result<RespValue> {
    if depth > MAX_DEPTH {
        return Err(invalid("RESP nesting too deep"));
    }
    let line = read_line(r)?;
    let (kind, rest) = line
        .split_at_checked(1)
        .ok_or_else(|| invalid("empty RESP line"))?;
    match kind {
        "+" => Ok(RespValue::Simple(rest.to_owned())),
        "-" => Ok(RespValue::Error(rest.to_owned())),
        ":" => rest
            .parse()
            .map(RespValue::Integer)
            .map_err(|_| invalid(format!("bad RESP integer {rest:?}"))),
        "$" => match usize::try_from(parse_len(rest)?) {
            Err(_) => Ok(RespValue::Nil),
            Ok(n) => {
                let mut buf = vec![0; n + 2];
                r.read_exact(&mut buf)?;
                if !buf.ends_with(b"\r\n") {
                    return Err(invalid("bulk string not terminated by CRLF"));
                }
                buf.truncate(n);
                Ok(RespValue::Bulk(buf))
            }
        },
        "*" => match usize::try_from(parse_len(rest)?) {
            Err(_) => Ok(RespValue::Nil),
            Ok(n) => (0..n)
                .map(|_| read_value(r, depth + 1))
                .collect::<io::Result<Vec<_>>>()
                .map(RespValue::Array),
        },
        other => Err(invalid(format!("unknown RESP type byte {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> io::Result<RespValue> {
        RespValue::read_from(&mut &bytes[..])
    }

    #[test]
    fn encodes_command() {
        assert_eq!(
            RespValue::encode_command(&["PING"]),
            b"*1\r\n$4\r\nPING\r\n".to_vec()
        );
        assert_eq!(
            RespValue::encode_command(&["SET", "k", ""]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn parses_scalars() -> io::Result<()> {
        assert_eq!(parse(b"+PONG\r\n")?, RespValue::Simple("PONG".into()));
        assert_eq!(parse(b"-ERR no\r\n")?, RespValue::Error("ERR no".into()));
        assert_eq!(parse(b":-7\r\n")?.as_int(), Some(-7));
        assert_eq!(
            parse(b"$5\r\nhe\r\no\r\n")?,
            RespValue::Bulk(b"he\r\no".to_vec())
        );
        assert_eq!(parse(b"$0\r\n\r\n")?.as_str(), Some(""));
        assert!(parse(b"$-1\r\n")?.is_nil());
        assert!(parse(b"*-1\r\n")?.is_nil());
        Ok(())
    }

    #[test]
    fn parses_nested_arrays() -> io::Result<()> {
        let v = parse(b"*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n:3\r\n")?;
        let outer = v.as_array().expect("array");
        assert_eq!(outer.len(), 2);
        let entry = outer[0].as_array().expect("entry");
        assert_eq!(entry[0].as_str(), Some("1-0"));
        assert_eq!(entry[1].as_array().map(<[_]>::len), Some(2));
        assert_eq!(outer[1], RespValue::Integer(3));
        Ok(())
    }

    #[test]
    fn rejects_malformed_input() {
        assert!(parse(b"").is_err());
        assert!(parse(b"+no newline").is_err());
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b":abc\r\n").is_err());
        assert!(parse(b"$3\r\nab").is_err());
        assert!(parse(b"$-5\r\n").is_err());
        assert!(parse(b"*2\r\n:1\r\n").is_err());
        let deep = "*1\r\n".repeat(40);
        assert!(parse(deep.as_bytes()).is_err());
    }
}
