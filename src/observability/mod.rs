//! What the broker tells about itself: counters every layer bumps (`metrics`), the `$SYS`
//! topics made from them (`sys`, which sees the broker through its `SysSource` trait, with the
//! smoothed rates of `load`), and the heap count behind `memory_limit` (`memory`). Everything above may use it; it uses nothing
//! above the message and configuration types.

pub mod load;
pub mod memory;
pub mod metrics;
pub mod sys;
