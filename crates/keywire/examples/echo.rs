//! Echo server and client in one program.
//!
//! ```sh
//! cargo run -p keywire --example echo            # starts a server, prints its ticket
//! cargo run -p keywire --example echo -- <ticket> "hello"   # echoes "hello" through it
//! ```
//!
//! Both sides use fresh keys; the server serves until interrupted.

use keywire::{Connection, Endpoint, EndpointConfig, SecretKey, Ticket};

const ALPN: &[u8] = b"keywire-example/echo/1";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let key = SecretKey::generate(&mut rand::rngs::OsRng);
    let endpoint = Endpoint::bind(EndpointConfig::new(key))?;
    match args.as_slice() {
        [] => serve(endpoint).await,
        [ticket, message] => ask(endpoint, ticket.parse()?, message).await,
        _ => Err("usage: echo [<ticket> <message>]".into()),
    }
}

async fn serve(endpoint: Endpoint) -> Result<(), Box<dyn std::error::Error>> {
    // Every connection speaking ALPN goes to this handler, each on its own task.
    endpoint.register(ALPN.to_vec(), |conn: Connection| async move {
        println!("connection from {}", conn.remote_node_id());
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            if let Ok(data) = recv.read_to_end(64 * 1024).await {
                let _ = send.write_all(&data).await;
                let _ = send.finish();
            }
        }
    })?;
    let ticket = Ticket::new(endpoint.node_addr()?)?;
    println!("echo server {}\nticket: {ticket}", endpoint.node_id());
    tokio::signal::ctrl_c().await?;
    endpoint.close().await;
    Ok(())
}

async fn ask(
    endpoint: Endpoint,
    ticket: Ticket,
    message: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let conn = endpoint.connect(&ticket.node, ALPN).await?;
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(message.as_bytes()).await?;
    send.finish()?;
    let reply = recv.read_to_end(64 * 1024).await?;
    println!(
        "{} echoed: {}",
        conn.remote_node_id(),
        String::from_utf8_lossy(&reply)
    );
    conn.close(0u32.into(), b"bye");
    endpoint.wait_idle().await;
    Ok(())
}
