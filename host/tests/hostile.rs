//! Hostile and broken peers: each is rejected with a precise reason while the scheduler
//! keeps serving a well-behaved client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

mod common;

use common::{bounded, Cluster, WAIT};
use stockade::net::dial::{dial, dial_with_preamble, DialError};
use stockade::net::{client_endpoint, Target};
use stockade::proto::{
    frame::encode, Builtin, ClientHello, CloseCode, FromClient, Hello, Outcome, Peer, Preamble, TaskKind, TaskSpec,
};

fn client_peer() -> Peer {
    Peer::Client(ClientHello { name: "hostile".into() })
}

/// The well-behaved client still gets answers.
async fn still_serving(cluster: &Cluster) {
    let client = cluster.client().await;
    let h = client.submit(TaskKind::Builtin(Builtin::Echo), b"ok".to_vec()).expect("submit");
    assert_eq!(bounded("echo after abuse", h).await.expect("outcome"), Outcome::Ok(b"ok".to_vec()));
    assert_eq!(client.scheduler_info(WAIT).await.expect("info").workers.len(), 1);
    client.close().await;
}

fn rejected(result: Result<stockade::net::Connected, DialError>) -> (Option<CloseCode>, String) {
    match result {
        Err(DialError::Rejected { code, reason, .. }) => (code, reason),
        Err(other) => panic!("expected a rejection, got: {other}"),
        Ok(_) => panic!("expected a rejection, got a connection"),
    }
}

/// Opens a raw QUIC connection (TLS verified) and a control stream.
async fn raw(cluster: &Cluster) -> (quinn::Endpoint, quinn::Connection, quinn::SendStream) {
    let target = cluster.target();
    let endpoint = client_endpoint(target.addr, &target.trust).expect("endpoint");
    let conn = endpoint.connect(target.addr, "localhost").expect("connect").await.expect("TLS handshake");
    let (send, _recv) = conn.open_bi().await.expect("stream");
    (endpoint, conn, send)
}

async fn close_reason(conn: &quinn::Connection) -> (Option<CloseCode>, String) {
    match bounded("the scheduler to close the connection", conn.closed()).await {
        quinn::ConnectionError::ApplicationClosed(c) => {
            (CloseCode::from_code(c.error_code), String::from_utf8_lossy(&c.reason).into_owned())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

#[tokio::test]
async fn wrong_protocol_version_is_rejected_readably() {
    let cluster = Cluster::start(1, 1, &[]);
    let preamble = Preamble { version: Preamble::current().version + 1 };
    let (code, reason) = rejected(dial_with_preamble(&cluster.target(), client_peer(), WAIT, preamble).await);
    assert_eq!(code, Some(CloseCode::VersionMismatch));
    let expected = format!("protocol version {} is not supported", preamble.version);
    assert!(reason.contains(&expected) && reason.contains("hint:"), "{reason}");
    still_serving(&cluster).await;
}

#[tokio::test]
async fn wrong_token_is_rejected() {
    let cluster = Cluster::start(1, 1, &[]);
    let mut target: Target = cluster.target();
    target.token = "not-the-token".into();
    let (code, reason) = rejected(dial(&target, client_peer(), WAIT).await);
    assert_eq!(code, Some(CloseCode::Unauthorized));
    assert!(reason.contains("token was not accepted"), "{reason}");
    // A worker with a bad token is refused the same way and never gets work.
    let (code, _) = rejected(
        dial(
            &target,
            Peer::Worker(stockade::proto::WorkerHello { name: "intruder".into(), slots: 4, store_id: String::new() }),
            WAIT,
        )
        .await,
    );
    assert_eq!(code, Some(CloseCode::Unauthorized));
    still_serving(&cluster).await;
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused_by_the_client() {
    let cluster = Cluster::start(1, 1, &[]);
    let mut target = cluster.target();
    target.trust = stockade::net::ServerTrust::Fingerprint(format!("sha256:{}", "00".repeat(32)));
    match dial(&target, client_peer(), WAIT).await {
        Err(DialError::Connect { reason, .. }) => {
            assert!(reason.contains("does not match the pinned"), "{reason}")
        }
        Err(other) => panic!("unexpected error: {other}"),
        Ok(_) => panic!("connected to a scheduler with the wrong certificate"),
    }
    still_serving(&cluster).await;
}

#[tokio::test]
async fn garbage_datagrams_are_ignored() {
    let cluster = Cluster::start(1, 1, &[]);
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..2000usize {
        let len = 1 + (i * 37) % 1400;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let _ = socket.send_to(&bytes, &cluster.address);
    }
    still_serving(&cluster).await;
}

#[tokio::test]
async fn a_stream_that_is_not_stockade_is_closed() {
    let cluster = Cluster::start(1, 1, &[]);
    let (_endpoint, conn, mut send) = raw(&cluster).await;
    send.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let (code, reason) = close_reason(&conn).await;
    assert_eq!(code, Some(CloseCode::ProtocolError), "{reason}");
    assert!(reason.contains("not a Stockade peer"), "{reason}");
    still_serving(&cluster).await;
}

#[tokio::test]
async fn an_oversized_frame_is_refused_before_allocation() {
    let cluster = Cluster::start(1, 1, &[]);
    // During the handshake (cap 64 KiB) ...
    let (_endpoint, conn, mut send) = raw(&cluster).await;
    send.write_all(&Preamble::current().to_bytes()).await.expect("preamble");
    send.write_all(&(1u32 << 20).to_le_bytes()).await.expect("length");
    let (code, reason) = close_reason(&conn).await;
    assert_eq!(code, Some(CloseCode::FrameTooLarge), "{reason}");
    assert!(reason.contains("exceeds the limit of 65536"), "{reason}");
    // ... and after it (cap 256 MiB): a 4 GiB announcement.
    let mut connected = dial(&cluster.target(), client_peer(), WAIT).await.expect("dial");
    connected.writer.get_mut().write_all(&u32::MAX.to_le_bytes()).await.expect("length");
    let (code, reason) = close_reason(&connected.conn).await;
    assert_eq!(code, Some(CloseCode::FrameTooLarge), "{reason}");
    still_serving(&cluster).await;
}

#[tokio::test]
async fn a_truncated_archive_is_refused() {
    let cluster = Cluster::start(1, 1, &[]);
    let connected = dial(&cluster.target(), client_peer(), WAIT).await.expect("dial");
    let msg = FromClient::Submit(vec![TaskSpec {
        id: 1,
        kind: TaskKind::Builtin(Builtin::Echo),
        payload: vec![7; 100],
        needs: vec![],
    }]);
    let bytes = encode(&msg).expect("encode");
    let cut = &bytes[..bytes.len() - 9];
    let mut frame = (cut.len() as u32).to_le_bytes().to_vec();
    frame.extend_from_slice(cut);
    let mut writer = connected.writer;
    writer.get_mut().write_all(&frame).await.expect("frame");
    let (code, reason) = close_reason(&connected.conn).await;
    assert_eq!(code, Some(CloseCode::MalformedFrame), "{reason}");
    assert!(reason.contains("malformed frame"), "{reason}");
    // A malformed Hello is refused the same way.
    let (_endpoint, conn, mut send) = raw(&cluster).await;
    send.write_all(&Preamble::current().to_bytes()).await.expect("preamble");
    let hello = encode(&Hello { token: String::new(), peer: client_peer() }).expect("encode");
    let mut frame = (hello.len() as u32).to_le_bytes().to_vec();
    frame.extend(std::iter::repeat_n(0xAB, hello.len()));
    send.write_all(&frame).await.expect("frame");
    let (code, _) = close_reason(&conn).await;
    assert_eq!(code, Some(CloseCode::MalformedFrame));
    still_serving(&cluster).await;
}

#[tokio::test]
async fn a_silent_connection_does_not_hold_up_others() {
    let cluster = Cluster::start(1, 1, &[]);
    let target = cluster.target();
    let endpoint = client_endpoint(target.addr, &target.trust).expect("endpoint");
    let conn = endpoint.connect(target.addr, "localhost").expect("connect").await.expect("TLS");
    // Say nothing; the other client is served meanwhile.
    still_serving(&cluster).await;
    conn.close(0u32.into(), b"done");
}
