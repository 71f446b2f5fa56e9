//! The notifier's posting lease: who may post a request's first Slack message, as rules
//! over the record, the clock and the caller, with no I/O.
//!
//! One message per request (Guarantee 3) rests on these rules. An attempt *claims* the
//! lease in the record (a compare-and-set), *renews* it while it waits for its turn at the
//! channel and once more right before it sends (so the lease always outlasts the call),
//! and *keeps* the message's reference, which ends the lease. The lease is fenced by the
//! attempt's name: only its holder renews, marks, releases or keeps, so a holder whose
//! lease lapsed and was taken over can neither post (its renewal says [`Held::Lost`]) nor
//! store a reference ([`Kept::Lost`]). An attempt that takes over an expired or unsure lease
//! must first look in the channel for a message the earlier holder may have posted.

use std::time::Duration;

use time::OffsetDateTime;

use crate::record::{RequestRecord, SlackClaim, SlackMessageRef};

/// What a claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// The message is posted: show the record by updating it.
    Posted(SlackMessageRef),
    /// Another attempt holds a live lease: look again within this long (when it ends).
    Busy(Duration),
    /// The lease is the caller's (the record was changed: write it). `look_since`: an
    /// earlier holder may have posted from then on, so look before posting.
    Ours {
        /// Where a look-up in the channel's history starts.
        look_since: Option<OffsetDateTime>,
    },
}

/// Whether the caller still holds its lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Held {
    /// Still the caller's (renewed: write the record).
    Ours,
    /// Another attempt took it over (or the message is stored): do not post.
    Lost,
}

/// What storing a posted message's reference did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    /// Stored, and the lease ended (write the record).
    Stored,
    /// A message was stored already (this one is a duplicate to update or leave).
    AlreadyPosted(SlackMessageRef),
    /// Another attempt holds the lease: it looks before it posts and will find this one.
    Lost,
}

/// The caller's claim, if it is the holder.
fn mine<'a>(r: &'a mut RequestRecord, me: &str) -> Option<&'a mut SlackClaim> {
    r.slack_claim.as_mut().filter(|c| c.by == me)
}

/// Claims the posting of `r`'s message for `me` at `now`, with leases lasting `lease`.
pub fn claim(r: &mut RequestRecord, me: &str, now: OffsetDateTime, lease: Duration) -> Claimed {
    if let Some(msg) = &r.slack {
        return Claimed::Posted(msg.clone());
    }
    let mut look_since = None;
    if let Some(c) = &r.slack_claim {
        let age = now - c.at;
        let live = age < lease && !c.unsure && c.by != me;
        if live {
            let left = if age.is_negative() {
                // A holder whose clock runs ahead: wait the whole lease.
                lease
            } else {
                lease.saturating_sub(age.unsigned_abs())
            };
            return Claimed::Busy(left);
        }
        // Expired, unsure or our own: the earlier attempt may have posted.
        look_since = Some(c.since.unwrap_or(c.at));
    }
    r.slack_claim = Some(SlackClaim {
        by: me.to_owned(),
        at: now,
        since: look_since.or(Some(now)),
        unsure: false,
    });
    Claimed::Ours { look_since }
}

/// Renews `me`'s lease as taken at `at`: now, or later, to cover a wait the holder
/// foresees (a lease taken "in the future" is live until a lease after that).
pub fn renew(r: &mut RequestRecord, me: &str, at: OffsetDateTime) -> Held {
    if r.slack.is_some() {
        return Held::Lost;
    }
    match mine(r, me) {
        Some(c) => {
            c.at = at;
            Held::Ours
        }
        None => Held::Lost,
    }
}

/// Marks `me`'s lease unsure after a post that may have landed (a timeout, a lost answer),
/// so the next attempt looks before posting and need not wait for the lease to end.
/// `true` if the record changed.
pub fn mark_unsure(r: &mut RequestRecord, me: &str) -> bool {
    match mine(r, me) {
        Some(c) if !c.unsure => {
            c.unsure = true;
            true
        }
        _ => false,
    }
}

/// Gives up `me`'s lease after a post that certainly did not land. `true` if changed.
pub fn release(r: &mut RequestRecord, me: &str) -> bool {
    if mine(r, me).is_none() {
        return false;
    }
    r.slack_claim = None;
    true
}

/// Stores where `me`'s posted message lives, ending the lease.
pub fn keep(r: &mut RequestRecord, me: &str, msg: &SlackMessageRef) -> Kept {
    if let Some(existing) = &r.slack {
        return Kept::AlreadyPosted(existing.clone());
    }
    match &r.slack_claim {
        Some(c) if c.by != me => Kept::Lost,
        _ => {
            r.slack = Some(msg.clone());
            r.slack_claim = None;
            Kept::Stored
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Permission, RequestId, TenantName, Username};
    use proptest::prelude::*;

    fn pending_record() -> RequestRecord {
        RequestRecord::new_pending(
            RequestId::new(),
            Username::parse("alice").expect("username"),
            TenantName::parse("genomics").expect("tenant"),
            Permission::ReadOnly,
            None,
            t(0),
        )
    }

    const LEASE: Duration = Duration::from_secs(30);

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_700_000_000 + secs)
    }

    fn msg(ts: &str) -> SlackMessageRef {
        SlackMessageRef {
            channel: "C1".into(),
            ts: ts.into(),
        }
    }

    #[test]
    fn a_live_lease_makes_others_wait_until_it_ends() {
        let mut r = pending_record();
        assert_eq!(
            claim(&mut r, "a", t(0), LEASE),
            Claimed::Ours { look_since: None }
        );
        assert_eq!(
            claim(&mut r, "b", t(10), LEASE),
            Claimed::Busy(Duration::from_secs(20))
        );
    }

    #[test]
    fn a_renewed_lease_stays_live_past_its_first_end() {
        let mut r = pending_record();
        claim(&mut r, "a", t(0), LEASE);
        assert_eq!(renew(&mut r, "a", t(25)), Held::Ours);
        assert!(matches!(claim(&mut r, "b", t(40), LEASE), Claimed::Busy(_)));
    }

    #[test]
    fn a_lease_renewed_over_a_foreseen_wait_stays_live_until_a_lease_after_it() {
        let mut r = pending_record();
        claim(&mut r, "a", t(0), LEASE);
        // One write covers an hour's pause.
        assert_eq!(renew(&mut r, "a", t(3600)), Held::Ours);
        assert!(matches!(
            claim(&mut r, "b", t(3000), LEASE),
            Claimed::Busy(_)
        ));
        assert!(matches!(
            claim(&mut r, "b", t(3620), LEASE),
            Claimed::Busy(_)
        ));
        assert!(matches!(
            claim(&mut r, "b", t(3631), LEASE),
            Claimed::Ours { .. }
        ));
    }

    #[test]
    fn a_lapsed_lease_taken_over_cannot_be_renewed_or_kept_and_the_taker_looks() {
        let mut r = pending_record();
        claim(&mut r, "a", t(0), LEASE);
        assert_eq!(
            claim(&mut r, "b", t(31), LEASE),
            Claimed::Ours {
                look_since: Some(t(0))
            }
        );
        assert_eq!(renew(&mut r, "a", t(32)), Held::Lost);
        assert_eq!(keep(&mut r, "a", &msg("1")), Kept::Lost);
        assert_eq!(r.slack, None);
        assert_eq!(keep(&mut r, "b", &msg("2")), Kept::Stored);
        assert_eq!(keep(&mut r, "a", &msg("1")), Kept::AlreadyPosted(msg("2")));
    }

    #[test]
    fn an_unsure_lease_is_taken_over_at_once_and_looked_behind() {
        let mut r = pending_record();
        claim(&mut r, "a", t(0), LEASE);
        assert!(mark_unsure(&mut r, "a"));
        assert_eq!(
            claim(&mut r, "b", t(1), LEASE),
            Claimed::Ours {
                look_since: Some(t(0))
            }
        );
    }

    #[test]
    fn only_the_holder_releases_or_marks() {
        let mut r = pending_record();
        claim(&mut r, "a", t(0), LEASE);
        assert!(!release(&mut r, "b"));
        assert!(!mark_unsure(&mut r, "b"));
        assert!(release(&mut r, "a"));
        assert_eq!(
            claim(&mut r, "b", t(1), LEASE),
            Claimed::Ours { look_since: None }
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Claim(usize),
        Renew(usize),
        Unsure(usize),
        Release(usize),
        Keep(usize),
        Tick(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0..3usize).prop_map(Op::Claim),
            (0..3usize).prop_map(Op::Renew),
            (0..3usize).prop_map(Op::Unsure),
            (0..3usize).prop_map(Op::Release),
            (0..3usize).prop_map(Op::Keep),
            (0..40u8).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// Whatever three attempts do in whatever order as time passes: at no instant do
        /// two of them hold a live lease that lets them post without looking; a taker of
        /// a lease another held always looks; a reference, once stored, never changes;
        /// and a holder whose lease was taken over never stores one.
        #[test]
        fn one_live_holder_and_one_stored_message(ops in proptest::collection::vec(op(), 1..60)) {
            let mut r = pending_record();
            let mut now = 0i64;
            // Per attempt: until when its last claim or renewal lets it post.
            let mut live_until: [Option<i64>; 3] = [None; 3];
            let mut stored: Option<SlackMessageRef> = None;
            let names = ["a", "b", "c"];
            let lease = LEASE.as_secs() as i64;
            for o in ops {
                match o {
                    Op::Tick(s) => now += i64::from(s),
                    Op::Claim(i) => {
                        let before = r.slack_claim.clone();
                        match claim(&mut r, names[i], t(now), LEASE) {
                            Claimed::Ours { look_since } => {
                                if let Some(b) = before.filter(|b| b.by != names[i]) {
                                    prop_assert!(look_since.is_some(), "took over {b:?} without looking");
                                    let j = names.iter().position(|n| *n == b.by).unwrap();
                                    live_until[j] = None;
                                }
                                // No one else may still think they can post.
                                for (j, l) in live_until.iter().enumerate() {
                                    if j != i {
                                        prop_assert!(l.is_none_or(|u| u <= now), "{} still live", names[j]);
                                    }
                                }
                                live_until[i] = Some(now + lease);
                            }
                            Claimed::Posted(m) => prop_assert_eq!(Some(m), stored.clone()),
                            Claimed::Busy(_) => {}
                        }
                    }
                    Op::Renew(i) => {
                        if renew(&mut r, names[i], t(now)) == Held::Ours {
                            live_until[i] = Some(now + lease);
                        } else {
                            live_until[i] = None;
                        }
                    }
                    Op::Unsure(i) => {
                        if mark_unsure(&mut r, names[i]) {
                            live_until[i] = None;
                        }
                    }
                    Op::Release(i) => {
                        if release(&mut r, names[i]) {
                            live_until[i] = None;
                        }
                    }
                    Op::Keep(i) => {
                        let other_holds = r.slack_claim.as_ref().is_some_and(|c| c.by != names[i]);
                        match keep(&mut r, names[i], &msg(names[i])) {
                            Kept::Stored => {
                                prop_assert!(stored.is_none());
                                prop_assert!(!other_holds, "stored while another held the lease");
                                stored = Some(msg(names[i]));
                            }
                            Kept::AlreadyPosted(m) => prop_assert_eq!(Some(m), stored.clone()),
                            Kept::Lost => prop_assert!(other_holds),
                        }
                    }
                }
                prop_assert_eq!(r.slack.clone(), stored.clone());
            }
        }
    }
}
