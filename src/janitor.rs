//! Background upkeep: removes finished tasks past their retention and marks running tasks
//! that went quiet as `stalled`. One loop, woken on the shorter of the two periods, ending
//! with the server.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

pub struct JanitorConfig {
    pub retention: Duration,
    /// `None`: never mark tasks stalled.
    pub stall_after: Option<Duration>,
}

impl JanitorConfig {
    /// Often enough that a mark lands within a quarter of the stall time (at most 5 s
    /// late), and a retention sweep within a tenth of the retention (at most a minute).
    fn period(&self) -> Duration {
        let sweep =
            (self.retention / 10).clamp(Duration::from_millis(200), Duration::from_secs(60));
        match self.stall_after {
            Some(stall) => {
                sweep.min((stall / 4).clamp(Duration::from_millis(200), Duration::from_secs(5)))
            }
            None => sweep,
        }
    }
}

pub async fn run(hub: Hub, config: JanitorConfig, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(config.period());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Scanning every task takes the per-task locks one by one; keep it off the
        // async workers that serve streams.
        let (scan, retention, stall) = (hub.clone(), config.retention, config.stall_after);
        let swept = tokio::task::spawn_blocking(move || {
            let removed = scan.sweep_finished(retention);
            let stalled = stall.map_or(0, |after| scan.mark_stalled(after));
            (removed, stalled)
        })
        .await;
        let swept = match (swept, stall) {
            // Nodes sharing tasks mark them through Redis, which awaits.
            (Ok((removed, _)), Some(after)) if hub.is_clustered() => {
                Ok((removed, hub.mark_stalled_clustered(after).await))
            }
            (swept, _) => swept,
        };
        if let Ok((removed, stalled)) = swept {
            if removed > 0 || stalled > 0 {
                tracing::debug!(removed, stalled, "janitor pass");
            }
        }
    }
}
