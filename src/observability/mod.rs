//! What the broker tells about itself: counters every layer bumps (`metrics`), the `$SYS`
//! topics made from them (`sys`, which sees the broker through its `SysSource` trait), and the
//! heap count behind `memory_limit` (`memory`). Everything above may use it; it uses nothing
//! above the message and configuration types.

pub mod memory;
pub mod metrics;
pub mod sys;
