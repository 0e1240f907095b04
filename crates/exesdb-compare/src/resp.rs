//! A small RESP3 client: commands as arrays of bulk strings, one at a time per connection, and
//! the replies parsed into [`Reply`]. Enough for SierraDB's commands; no pipelining, pub/sub or
//! cluster redirects.

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// A reply, as RESP3 types it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    Simple(String),
    Error(String),
    Number(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
    Map(Vec<(Reply, Reply)>),
    Boolean(bool),
    Double(f64),
    Null,
}

impl Reply {
    /// The value under `key` of a map reply.
    pub(crate) fn field(&self, key: &str) -> Option<&Reply> {
        let Reply::Map(entries) = self else {
            return None;
        };
        entries
            .iter()
            .find(|(name, _)| name.as_text() == Some(key))
            .map(|(_, value)| value)
    }

    pub(crate) fn as_text(&self) -> Option<&str> {
        match self {
            Reply::Simple(text) => Some(text),
            Reply::Bulk(bytes) => std::str::from_utf8(bytes).ok(),
            _ => None,
        }
    }

    pub(crate) fn as_number(&self) -> Option<i64> {
        match self {
            Reply::Number(number) => Some(*number),
            _ => None,
        }
    }
}

/// One connection to a RESP3 server.
pub(crate) struct Connection {
    reading: BufReader<OwnedReadHalf>,
    writing: OwnedWriteHalf,
    request: Vec<u8>,
}

/// A bulk string longer than this is taken for a broken stream, not a reply.
const BULK_BYTES_MAX: usize = 512 * 1024 * 1024;

impl Connection {
    /// Connects and switches the connection to RESP3 (`HELLO 3`).
    pub(crate) async fn open(address: &str) -> Result<Connection> {
        let stream = TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to {address}"))?;
        stream.set_nodelay(true)?;
        let (reading, writing) = stream.into_split();
        let mut connection = Connection {
            reading: BufReader::new(reading),
            writing,
            request: Vec::new(),
        };
        if let Reply::Error(error) = connection.call(&[b"HELLO", b"3"]).await? {
            bail!("HELLO 3 refused: {error}");
        }
        Ok(connection)
    }

    /// Sends one command and waits for its reply (an error reply is `Ok(Reply::Error)`).
    pub(crate) async fn call(&mut self, arguments: &[&[u8]]) -> Result<Reply> {
        self.request.clear();
        self.request
            .extend_from_slice(format!("*{}\r\n", arguments.len()).as_bytes());
        for argument in arguments {
            self.request
                .extend_from_slice(format!("${}\r\n", argument.len()).as_bytes());
            self.request.extend_from_slice(argument);
            self.request.extend_from_slice(b"\r\n");
        }
        self.writing.write_all(&self.request).await?;
        read_reply(&mut self.reading).await
    }
}

async fn read_line<R: AsyncBufRead + Unpin + Send>(reading: &mut R) -> Result<String> {
    let mut line = String::new();
    if reading.read_line(&mut line).await? == 0 {
        bail!("the server closed the connection");
    }
    let Some(line) = line.strip_suffix("\r\n") else {
        bail!("a reply line without CRLF: {line:?}");
    };
    Ok(line.to_string())
}

fn length(text: &str) -> Result<Option<usize>> {
    if text == "-1" || text == "?" {
        return Ok(None);
    }
    let length: usize = text
        .parse()
        .with_context(|| format!("a bad length {text:?}"))?;
    Ok(Some(length))
}

async fn read_bulk<R: AsyncBufRead + Unpin + Send>(
    reading: &mut R,
    length: usize,
) -> Result<Vec<u8>> {
    if length > BULK_BYTES_MAX {
        bail!("a bulk string of {length} bytes");
    }
    let mut bytes = vec![0; length + 2];
    reading.read_exact(&mut bytes).await?;
    if !bytes.ends_with(b"\r\n") {
        bail!("a bulk string without CRLF");
    }
    bytes.truncate(length);
    Ok(bytes)
}

fn read_reply<R: AsyncBufRead + Unpin + Send>(
    reading: &mut R,
) -> std::pin::Pin<Box<dyn Future<Output = Result<Reply>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(reading).await?;
        let (kind, rest) = line.split_at(line.chars().next().map_or(0, char::len_utf8));
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Number(
                rest.parse()
                    .with_context(|| format!("a bad number {rest:?}"))?,
            ),
            "," => Reply::Double(
                rest.parse()
                    .with_context(|| format!("a bad double {rest:?}"))?,
            ),
            "#" => Reply::Boolean(rest == "t"),
            "_" => Reply::Null,
            "$" | "=" | "!" => match length(rest)? {
                None => Reply::Null,
                Some(length) => {
                    let bytes = read_bulk(reading, length).await?;
                    if kind == "!" {
                        Reply::Error(String::from_utf8_lossy(&bytes).into_owned())
                    } else {
                        Reply::Bulk(bytes)
                    }
                }
            },
            "*" | "~" | ">" => match length(rest)? {
                None => Reply::Null,
                Some(count) => {
                    let mut items = Vec::with_capacity(count.min(1024));
                    for _ in 0..count {
                        items.push(read_reply(reading).await?);
                    }
                    Reply::Array(items)
                }
            },
            // An attribute: metadata about the reply that follows, which nothing here needs.
            "|" => {
                let count = length(rest)?.unwrap_or(0);
                for _ in 0..count * 2 {
                    read_reply(reading).await?;
                }
                read_reply(reading).await?
            }
            "%" => match length(rest)? {
                None => Reply::Null,
                Some(count) => {
                    let mut entries = Vec::with_capacity(count.min(1024));
                    for _ in 0..count {
                        let key = read_reply(reading).await?;
                        let value = read_reply(reading).await?;
                        entries.push((key, value));
                    }
                    Reply::Map(entries)
                }
            },
            "(" => Reply::Simple(rest.to_string()),
            _ => bail!("an unknown reply type in {line:?}"),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Reply> {
        let mut reading = bytes;
        read_reply(&mut reading).await
    }

    #[tokio::test]
    async fn replies_of_each_type_parse() -> Result<()> {
        assert_eq!(parse(b"+OK\r\n").await?, Reply::Simple("OK".into()));
        assert_eq!(parse(b"-ERR no\r\n").await?, Reply::Error("ERR no".into()));
        assert_eq!(parse(b":-42\r\n").await?, Reply::Number(-42));
        assert_eq!(
            parse(b"$5\r\na\r\nbc\r\n").await?,
            Reply::Bulk(b"a\r\nbc".to_vec())
        );
        assert_eq!(parse(b"_\r\n").await?, Reply::Null);
        assert_eq!(parse(b"#t\r\n").await?, Reply::Boolean(true));
        let map = parse(b"%2\r\n+a\r\n:1\r\n+b\r\n*2\r\n$1\r\nx\r\n#f\r\n").await?;
        assert_eq!(map.field("a").and_then(Reply::as_number), Some(1));
        assert_eq!(
            map.field("b"),
            Some(&Reply::Array(vec![
                Reply::Bulk(b"x".to_vec()),
                Reply::Boolean(false)
            ]))
        );
        assert_eq!(
            parse(b"|1\r\n+key\r\n+value\r\n:7\r\n").await?,
            Reply::Number(7)
        );
        Ok(())
    }

    #[tokio::test]
    async fn broken_replies_are_errors() {
        assert!(
            parse(b"$5\r\nabc\r\n").await.is_err(),
            "a short bulk string"
        );
        assert!(parse(b"?what\r\n").await.is_err(), "an unknown type");
        assert!(parse(b":12").await.is_err(), "no CRLF");
        assert!(parse(b":twelve\r\n").await.is_err(), "not a number");
    }
}
