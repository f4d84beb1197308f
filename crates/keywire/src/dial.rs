//! Trying several addresses of one node: IPv6 first, the next attempt 250 ms later or as soon as
//! the previous one fails (Happy Eyeballs, RFC 8305 §5), first success wins.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::task::JoinSet;

/// Delay between starting attempts (RFC 8305 §5 recommends 250 ms).
pub const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Orders addresses as RFC 8305 §4 asks: families interleaved, IPv6 first, otherwise in the
/// given order.
pub(crate) fn order(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let v6: Vec<_> = addrs.iter().filter(|a| a.is_ipv6()).copied().collect();
    let v4: Vec<_> = addrs.iter().filter(|a| a.is_ipv4()).copied().collect();
    let mut out = Vec::with_capacity(addrs.len());
    for i in 0..v6.len().max(v4.len()) {
        out.extend(v6.get(i));
        out.extend(v4.get(i));
    }
    out
}

/// Runs `attempt` on each address in order, staggered by `delay`, and returns the first success;
/// the attempts still running are cancelled. On failure, every address's error, in order.
pub(crate) async fn race<T, E, F, Fut>(
    addrs: Vec<SocketAddr>,
    delay: Duration,
    attempt: F,
) -> Result<T, Vec<(SocketAddr, E)>>
where
    T: Send + 'static,
    E: Send + 'static,
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
{
    let mut pending = addrs.into_iter().enumerate();
    let mut running: JoinSet<(usize, SocketAddr, Result<T, E>)> = JoinSet::new();
    let mut failures: Vec<(usize, SocketAddr, E)> = Vec::new();
    let mut start_next = |running: &mut JoinSet<_>| match pending.next() {
        Some((index, addr)) => {
            let fut = attempt(addr);
            running.spawn(async move { (index, addr, fut.await) });
            true
        }
        None => false,
    };
    let mut more = start_next(&mut running);
    loop {
        let timer = tokio::time::sleep(delay);
        tokio::select! {
            _ = timer, if more => more = start_next(&mut running),
            joined = running.join_next() => match joined {
                Some(Ok((_, _, Ok(value)))) => return Ok(value),
                Some(Ok((index, addr, Err(e)))) => {
                    failures.push((index, addr, e));
                    if more {
                        more = start_next(&mut running);
                    }
                }
                // A panicking attempt is a bug; the address simply counts as not answering.
                Some(Err(_)) => {
                    if more {
                        more = start_next(&mut running);
                    }
                }
                None if !more => break,
                None => more = start_next(&mut running),
            },
        }
    }
    failures.sort_by_key(|(index, _, _)| *index);
    Err(failures.into_iter().map(|(_, addr, e)| (addr, e)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::time::Instant;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn interleaves_ipv6_first() {
        let given = [addr("1.1.1.1:1"), addr("2.2.2.2:2"), addr("[::1]:3")];
        assert_eq!(
            order(&given),
            vec![addr("[::1]:3"), addr("1.1.1.1:1"), addr("2.2.2.2:2")]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn staggers_and_takes_first_success() {
        let started = Arc::new(Mutex::new(Vec::new()));
        let t0 = Instant::now();
        let log = started.clone();
        // The first address hangs, the second answers after 10 ms.
        let result = race(
            vec![addr("[::1]:1"), addr("127.0.0.1:2")],
            ATTEMPT_DELAY,
            move |a| {
                log.lock().unwrap().push((a.port(), t0.elapsed()));
                async move {
                    if a.port() == 1 {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Ok::<u16, ()>(a.port())
                }
            },
        )
        .await;
        assert_eq!(result, Ok(2));
        let started = started.lock().unwrap().clone();
        assert_eq!(started[0], (1, Duration::ZERO));
        assert_eq!(started[1], (2, ATTEMPT_DELAY));
        assert_eq!(t0.elapsed(), ATTEMPT_DELAY + Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn next_attempt_starts_at_once_after_a_failure_and_all_errors_are_kept() {
        let t0 = Instant::now();
        let result = race(
            vec![addr("[::1]:1"), addr("127.0.0.1:2")],
            ATTEMPT_DELAY,
            |a| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Err::<(), u16>(a.port())
            },
        )
        .await;
        assert_eq!(
            result,
            Err(vec![(addr("[::1]:1"), 1), (addr("127.0.0.1:2"), 2)])
        );
        assert_eq!(t0.elapsed(), Duration::from_millis(10));
    }
}
