//! The forwarder thread: a TUN device read and written by a [`Forwarder`] on its own OS
//! thread with its own current-thread tokio runtime, so the controller's sync loop never
//! waits on packets and packets never wait on a sync.
//!
//! Reads are batched: after one awaited `recv`, up to [`BATCH`] more packets are drained
//! with non-blocking reads into preallocated buffers, processed, and written back with
//! non-blocking sends (awaiting only when the device is full). New plans arrive through a
//! [`Mailbox`]: the controller drops the freshly built [`ServiceTable`] in, the thread takes
//! the latest one between batches and swaps it in with [`Forwarder::install`].

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::forwarder::{Action, Forwarder, ForwarderConfig};
use super::services::ServiceTable;

/// Packets drained per batch.
pub const BATCH: usize = 64;
/// Largest packet handled (the device MTU must not exceed it).
pub const MAX_PACKET: usize = 65_535;
/// Conntrack slots examined per maintenance tick.
const SWEEP_BUDGET: usize = 4096;

/// The hand-off point for new plans: the latest table wins.
#[derive(Debug, Default)]
pub struct Mailbox {
    slot: Mutex<Option<ServiceTable>>,
    stop: AtomicBool,
    notify: Notify,
}

impl Mailbox {
    /// Posts a new table (replacing one not yet taken) and wakes the forwarder.
    pub fn post(&self, table: ServiceTable) {
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(table);
        }
        self.notify.notify_one();
    }

    /// Asks the forwarder thread to exit.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }

    fn take(&self) -> Option<ServiceTable> {
        self.slot.lock().ok().and_then(|mut s| s.take())
    }
}

/// Creates the TUN device `name` in the calling thread's network namespace and runs the
/// forwarder on it until [`Mailbox::stop`]. `ready` receives the device's creation result.
pub fn run(
    name: &str,
    mtu: u16,
    config: ForwarderConfig,
    mailbox: Arc<Mailbox>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    runtime.block_on(async move {
        let device = match tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .build_async()
        {
            Ok(d) => d,
            Err(err) => {
                let _ = ready.send(Err(err));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let table = mailbox.take().unwrap_or_else(|| {
            ServiceTable::build(
                &crate::plan::ProxyPlan {
                    node: crate::plan::NodeContext {
                        node_name: String::new(),
                        ipv4: None,
                        ipv6: None,
                        masquerade_all: false,
                        masquerade_mark: 0,
                        localhost_nodeports: false,
                    },
                    services: Vec::new(),
                },
                crate::lb::Algorithm::Random,
                0,
            )
        });
        let mut fw = Forwarder::new(config, table);
        let epoch = Instant::now();
        let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0u8; MAX_PACKET]).collect();
        let mut lens = [0usize; BATCH];
        let mut reply = vec![0u8; 1500];
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            if mailbox.stop.load(Ordering::SeqCst) {
                break;
            }
            tokio::select! {
                _ = mailbox.notified() => {
                    if let Some(table) = mailbox.take() {
                        let removed = fw.install(table);
                        tracing::debug!(removed, "userspace forwarder installed a new plan");
                    }
                }
                _ = tick.tick() => {
                    fw.maintain(epoch.elapsed(), SWEEP_BUDGET);
                }
                first = device.recv(&mut bufs[0]) => {
                    let Ok(n) = first else { continue };
                    lens[0] = n;
                    let mut count = 1;
                    while count < BATCH {
                        match device.try_recv(&mut bufs[count]) {
                            Ok(n) => { lens[count] = n; count += 1; }
                            Err(_) => break,
                        }
                    }
                    let now = epoch.elapsed();
                    for i in 0..count {
                        let pkt = &mut bufs[i][..lens[i]];
                        let out: &[u8] = match fw.process(pkt, &mut reply, now) {
                            Action::Forward => pkt,
                            Action::Reply(n) => &reply[..n],
                            Action::Drop => continue,
                        };
                        if device.try_send(out).is_err() {
                            let _ = device.send(out).await;
                        }
                    }
                }
            }
        }
    });
}

impl Mailbox {
    async fn notified(&self) {
        self.notify.notified().await;
    }
}
