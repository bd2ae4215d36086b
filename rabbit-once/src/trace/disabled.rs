//! Without feature `opentelemetry`: the hooks do nothing, take no room, and compile away.

use crate::message::Message;

/// Without the feature: nothing, and no size.
#[derive(Debug, Default)]
pub(crate) struct PublishTrace;

impl PublishTrace {
    #[inline(always)]
    pub(crate) fn finish<T, E>(&mut self, _result: &Result<T, E>) {}
}

#[inline(always)]
pub(crate) fn on_publish(_msg: &mut Message, _frame_max: u32) -> PublishTrace {
    PublishTrace
}

#[cfg(feature = "dedup")]
#[inline(always)]
pub(crate) fn on_enqueue(_msg: &mut Message, _frame_max: u32) {}

/// Without the feature: nothing, and no size.
#[cfg(feature = "dedup")]
#[derive(Debug)]
pub(crate) struct CommitSpan;

#[cfg(feature = "dedup")]
#[inline(always)]
pub(crate) fn commit_span<'d>(
    _queue: &str,
    _group: &str,
    _deliveries: impl IntoIterator<Item = &'d crate::consumer::Delivery>,
) -> CommitSpan {
    CommitSpan
}

#[cfg(feature = "dedup")]
impl CommitSpan {
    #[inline(always)]
    pub(crate) fn run<F>(&self, _queue: &str, fut: F) -> F {
        fut
    }

    #[inline(always)]
    pub(crate) fn ack(
        &self,
        _queue: &str,
        _group: &str,
        deliveries: impl Iterator<Item = crate::consumer::Delivery>,
    ) {
        deliveries.for_each(crate::consumer::Delivery::ack);
    }
}

#[cfg(feature = "dedup")]
#[inline(always)]
pub(crate) fn ack_settled(
    delivery: crate::consumer::Delivery,
    _queue: &str,
    _outcome: &'static str,
) {
    delivery.ack();
}

#[cfg(feature = "dedup")]
#[inline(always)]
pub(crate) fn handling<F>(_delivery: &crate::consumer::Delivery, fut: F) -> F {
    fut
}
