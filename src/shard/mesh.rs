//! The cross-shard mesh: one bounded single-producer/single-consumer queue
//! for every ordered pair of shards, and an eventfd per shard to wake it.
//!
//! ```text
//!   shard 0 ──q01──▶ shard 1        every shard has N-1 outgoing and
//!      ▲  ◀──q10───    │            N-1 incoming queues; no locks
//!      └────q20──── shard 2
//! ```
//! A full queue never blocks the sender: messages wait in a local overflow
//! list and go out on a later loop turn, in order.

use crate::broker::{Command, Output};
use crate::ids::ShardId;
use crate::io::EventFd;
use std::collections::VecDeque;
use std::sync::Arc;

/// What shards send each other.
#[derive(Debug)]
pub enum ShardMsg {
    /// For the broker of the destination's owner.
    Command(Command),
    /// For a connection owned by the receiving shard.
    Output(Output),
    /// A connection moving to the receiving shard, which owns the
    /// destination of its first request (`Conn::move_to`).
    Adopt(Box<super::conn::Conn>),
}

/// One shard's ends of the mesh.
#[derive(Debug)]
pub struct Mesh {
    me: ShardId,
    outgoing: Vec<Option<rtrb::Producer<ShardMsg>>>,
    incoming: Vec<rtrb::Consumer<ShardMsg>>,
    overflow: Vec<VecDeque<ShardMsg>>,
    wakers: Vec<Arc<EventFd>>,
    to_wake: Vec<bool>,
}

/// Builds the meshes of `count` shards with queues of `capacity` messages.
pub fn build(count: usize, capacity: usize) -> std::io::Result<Vec<Mesh>> {
    let wakers: Vec<Arc<EventFd>> = (0..count)
        .map(|_| EventFd::new().map(Arc::new))
        .collect::<Result<_, _>>()?;
    let mut meshes: Vec<Mesh> = (0..count)
        .map(|i| Mesh {
            me: ShardId(i as u16),
            outgoing: (0..count).map(|_| None).collect(),
            incoming: Vec::new(),
            overflow: (0..count).map(|_| VecDeque::new()).collect(),
            wakers: wakers.clone(),
            to_wake: vec![false; count],
        })
        .collect();
    for from in 0..count {
        for to in 0..count {
            if from != to {
                let (producer, consumer) = rtrb::RingBuffer::new(capacity);
                meshes[from].outgoing[to] = Some(producer);
                meshes[to].incoming.push(consumer);
            }
        }
    }
    Ok(meshes)
}

impl Mesh {
    pub fn me(&self) -> ShardId {
        self.me
    }

    /// This shard's eventfd, which the shard keeps a read armed on.
    pub fn waker(&self) -> &Arc<EventFd> {
        &self.wakers[usize::from(self.me.0)]
    }

    /// The eventfd of every shard (to wake them all on shutdown).
    pub fn all_wakers(&self) -> Vec<Arc<EventFd>> {
        self.wakers.clone()
    }

    /// Queues `msg` for shard `to` (never this shard).
    pub fn send(&mut self, to: ShardId, msg: ShardMsg) {
        let to = usize::from(to.0);
        assert_ne!(
            to,
            usize::from(self.me.0),
            "local messages do not cross the mesh"
        );
        self.overflow[to].push_back(msg);
    }

    /// Moves queued messages into the rings and wakes their shards. Called
    /// once per loop turn so a burst costs one wake-up per peer.
    pub fn flush(&mut self) {
        for to in 0..self.overflow.len() {
            let Some(producer) = self.outgoing[to].as_mut() else {
                continue;
            };
            while let Some(msg) = self.overflow[to].pop_front() {
                match producer.push(msg) {
                    Ok(()) => self.to_wake[to] = true,
                    Err(rtrb::PushError::Full(msg)) => {
                        self.overflow[to].push_front(msg);
                        self.to_wake[to] = true;
                        break;
                    }
                }
            }
        }
        for (to, wake) in self.to_wake.iter_mut().enumerate() {
            if std::mem::take(wake) {
                self.wakers[to].wake();
            }
        }
    }

    /// Whether messages still wait for room in a peer's queue.
    pub fn has_overflow(&self) -> bool {
        self.overflow.iter().any(|q| !q.is_empty())
    }

    /// Takes every message that arrived, in per-sender order.
    pub fn receive(&mut self, out: &mut Vec<ShardMsg>) {
        for consumer in &mut self.incoming {
            while let Ok(msg) = consumer.pop() {
                out.push(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::Command;
    use crate::ids::{ConnId, ShardId};

    fn msg(seq: u64) -> ShardMsg {
        ShardMsg::Command(Command::Disconnected(ConnId {
            shard: ShardId(0),
            seq,
        }))
    }

    fn seq(msg: &ShardMsg) -> u64 {
        match msg {
            ShardMsg::Command(Command::Disconnected(conn)) => conn.seq,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn messages_arrive_in_order_even_through_overflow() {
        let mut meshes = build(3, 4);
        let mut meshes = meshes.as_mut().unwrap().drain(..).collect::<Vec<_>>();
        for i in 0..10 {
            meshes[0].send(ShardId(2), msg(i));
        }
        meshes[0].flush();
        assert!(meshes[0].has_overflow(), "capacity 4");
        let mut got = Vec::new();
        while got.len() < 10 {
            let mut batch = Vec::new();
            meshes[2].receive(&mut batch);
            got.extend(batch.iter().map(seq));
            meshes[0].flush();
        }
        assert_eq!(got, (0..10).collect::<Vec<_>>());
        let mut none = Vec::new();
        meshes[1].receive(&mut none);
        assert!(none.is_empty());
    }
}
