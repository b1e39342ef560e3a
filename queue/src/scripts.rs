//! The Lua scripts, one per state transition, each with the shared fragments of
//! `lua/common.lua` in front.
//!
//! A [`redis::Script`] is sent by its SHA1 (`EVALSHA`) and loaded only when a server does not
//! know it yet, so each script crosses the network once per server.

use std::sync::LazyLock;

use redis::Script;

macro_rules! script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../lua/common.lua"),
                "\n",
                include_str!(concat!("../lua/", $file))
            ))
        })
    };
}

/// A backend-limit script: `common.lua`, `limits.lua`, then the script.
macro_rules! limit_script {
    ($file:literal) => {
        LazyLock::new(|| {
            Script::new(concat!(
                include_str!("../lua/common.lua"),
                "\n",
                include_str!("../lua/limits.lua"),
                "\n",
                include_str!(concat!("../lua/", $file))
            ))
        })
    };
}

pub(crate) static ENQUEUE: LazyLock<Script> = script!("enqueue.lua");
pub(crate) static CLAIM: LazyLock<Script> = script!("claim.lua");
pub(crate) static HEARTBEAT: LazyLock<Script> = script!("heartbeat.lua");
pub(crate) static DELTA: LazyLock<Script> = script!("delta.lua");
pub(crate) static STREAM_TEXT: LazyLock<Script> = script!("stream_text.lua");
pub(crate) static COMPLETE: LazyLock<Script> = script!("complete.lua");
pub(crate) static FAIL: LazyLock<Script> = script!("fail.lua");
pub(crate) static RELEASE: LazyLock<Script> = script!("release.lua");
pub(crate) static CANCEL: LazyLock<Script> = script!("cancel.lua");
pub(crate) static RETRY: LazyLock<Script> = script!("retry.lua");
pub(crate) static REAP: LazyLock<Script> = script!("reap.lua");
pub(crate) static PROMOTE: LazyLock<Script> = script!("promote.lua");
pub(crate) static STATS: LazyLock<Script> = script!("stats.lua");
pub(crate) static WORKER_BEAT: LazyLock<Script> = script!("worker_beat.lua");
pub(crate) static WORKERS: LazyLock<Script> = script!("workers.lua");
pub(crate) static LIST: LazyLock<Script> = script!("list.lua");
pub(crate) static RETRY_FAILED: LazyLock<Script> = script!("retry_failed.lua");
pub(crate) static PURGE: LazyLock<Script> = script!("purge.lua");
pub(crate) static HISTORY: LazyLock<Script> = script!("history.lua");
pub(crate) static HEADS: LazyLock<Script> = script!("heads.lua");
pub(crate) static OWNERS: LazyLock<Script> = script!("owners.lua");
pub(crate) static BACKEND_ACQUIRE: LazyLock<Script> = limit_script!("backend_acquire.lua");
pub(crate) static BACKEND_RENEW: LazyLock<Script> = limit_script!("backend_renew.lua");
pub(crate) static BACKEND_RELEASE: LazyLock<Script> = limit_script!("backend_release.lua");
pub(crate) static BACKEND_STATE: LazyLock<Script> = limit_script!("backend_state.lua");
