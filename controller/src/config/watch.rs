//! Exit when the `--config` file changes, as upstream (it has no reload: the DaemonSet or
//! systemd restarts it with the new file).
//!
//! The file is read again every second and compared with what was loaded, which also sees
//! a ConfigMap update (kubelet swaps a `..data` symlink, which file events on the path
//! itself can miss). A file that is missing for a moment (during the swap) is not a change.

use std::path::PathBuf;
use std::time::Duration;

/// How often the file is read again.
const PERIOD: Duration = Duration::from_secs(1);

/// Watches one config file.
#[derive(Debug)]
pub struct ConfigFileWatch {
    file: Option<(PathBuf, Vec<u8>)>,
    period: Duration,
}

impl ConfigFileWatch {
    /// Watches `path` (nothing when `None`), remembering its current contents.
    pub fn new(path: Option<PathBuf>) -> Self {
        let file = path.map(|path| {
            let loaded = std::fs::read(&path).unwrap_or_default();
            (path, loaded)
        });
        ConfigFileWatch {
            file,
            period: PERIOD,
        }
    }

    /// Resolves with the reason to exit once the file's contents differ from the loaded
    /// ones; never without a file.
    pub async fn updated(&mut self) -> String {
        let Some((path, loaded)) = &self.file else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval(self.period);
        loop {
            tick.tick().await;
            match std::fs::read(path) {
                Ok(now) if now != *loaded => {
                    return format!(
                        "content of the configuration file {} was updated: exiting to be restarted with it, as kube-proxy does",
                        path.display()
                    );
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::test_support::TestDir;

    #[tokio::test(flavor = "current_thread")]
    async fn a_changed_file_resolves_and_a_missing_one_does_not() {
        let dir = TestDir::new("config-watch");
        let path = dir.write("config.conf", "mode: iptables\n");
        let mut watch = ConfigFileWatch::new(Some(path.clone()));
        watch.period = Duration::from_millis(10);
        dir.remove("config.conf");
        let waited = tokio::time::timeout(Duration::from_millis(100), watch.updated()).await;
        assert!(waited.is_err(), "a missing file is not a change");
        dir.write("config.conf", "mode: nftables\n");
        let reason = tokio::time::timeout(Duration::from_secs(5), watch.updated())
            .await
            .expect("noticed");
        assert!(reason.contains("config.conf"), "{reason}");
        let mut none = ConfigFileWatch::new(None);
        let waited = tokio::time::timeout(Duration::from_millis(50), none.updated()).await;
        assert!(waited.is_err());
    }
}
