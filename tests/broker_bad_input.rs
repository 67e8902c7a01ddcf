//! Bad input from the network: each case gets an ERROR frame where one can
//! be sent and a closed connection, and the server keeps serving everyone
//! else.

#[path = "support/server.rs"]
mod server;

use server::ServerProcess;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use twinmq::protocol::{self, ErrorCode, Frame, Limits};

/// Reads until the server closes; returns the frames it sent.
fn frames_until_closed(mut stream: TcpStream) -> Vec<Frame> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut bytes = Vec::new();
    match stream.read_to_end(&mut bytes) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the server did not close the connection: {e}"),
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while let Some((frame, used)) = protocol::decode(&bytes[at..], &Limits::default()).unwrap() {
        frames.push(frame);
        at += used;
    }
    frames
}

fn hello() -> Vec<u8> {
    let mut buf = Vec::new();
    Frame::Hello(protocol::Hello {
        magic: protocol::MAGIC,
        version: protocol::PROTOCOL_VERSION,
        client_id: "bad-input-test".into(),
        username: String::new(),
        password: Default::default(),
    })
    .encode(&mut buf)
    .unwrap();
    buf
}

fn error_code(frames: &[Frame]) -> Option<ErrorCode> {
    frames.iter().find_map(|f| match f {
        Frame::Error(e) => Some(e.code),
        _ => None,
    })
}

fn still_serving(server: &ServerProcess) {
    let client = twinmq::client::Client::connect(&server.url(), Default::default()).unwrap();
    let mut producer = client.producer(Default::default());
    producer
        .send_and_wait("/queue/alive", bytes::Bytes::from_static(b"ok"))
        .unwrap();
}

#[test]
fn malformed_input_gets_an_error_and_a_closed_connection() {
    let server = ServerProcess::start(2, "[net.client]\nhandshake_timeout_ms = 300\n");
    let connect = || TcpStream::connect(server.client).unwrap();

    // Random bytes: the first four make an impossible length.
    let mut s = connect();
    s.write_all(&[0x9c, 0xf3, 0x11, 0xd0, 1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    assert_eq!(
        error_code(&frames_until_closed(s)),
        Some(ErrorCode::FrameTooLarge)
    );

    // A length far beyond the limit, with no body at all.
    let mut s = connect();
    s.write_all(&u32::MAX.to_le_bytes()).unwrap();
    assert_eq!(
        error_code(&frames_until_closed(s)),
        Some(ErrorCode::FrameTooLarge)
    );

    // A frame cut short by the client going away.
    let mut s = connect();
    let h = hello();
    s.write_all(&h[..h.len() - 3]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(error_code(&frames_until_closed(s)), None);

    // An unknown frame type after a good handshake.
    let mut s = connect();
    s.write_all(&hello()).unwrap();
    s.write_all(&[1, 0, 0, 0, 200]).unwrap();
    let frames = frames_until_closed(s);
    assert!(
        matches!(frames.first(), Some(Frame::Welcome(_))),
        "{frames:?}"
    );
    assert_eq!(error_code(&frames), Some(ErrorCode::UnknownFrameType));

    // A first frame that is not HELLO.
    let mut s = connect();
    let mut ping = Vec::new();
    Frame::Ping(protocol::Ping { token: 1 })
        .encode(&mut ping)
        .unwrap();
    s.write_all(&ping).unwrap();
    assert_eq!(
        error_code(&frames_until_closed(s)),
        Some(ErrorCode::HandshakeRequired)
    );

    // A handshake that never comes.
    let s = connect();
    assert_eq!(
        error_code(&frames_until_closed(s)),
        Some(ErrorCode::HandshakeTimeout)
    );

    still_serving(&server);
    server::wait_until(
        Duration::from_secs(5),
        "bad connections to be released",
        || server.status().connections == 0,
    );
}

#[test]
fn a_message_larger_than_one_journal_batch_is_refused_up_front() {
    // batch_bytes_max is 256 KiB in test profiles.
    let server = ServerProcess::start(1, "");
    let client = twinmq::client::Client::connect(&server.url(), Default::default()).unwrap();
    let mut producer = client.producer(Default::default());
    let error = producer
        .send_and_wait("/queue/big", bytes::Bytes::from(vec![0u8; 300 * 1024]))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("frame too large") || error.contains("exceeds"),
        "{error}"
    );
    still_serving(&server);
}
