//! Slack's interaction wire format, parsed once into the few things TARS acts on.
//!
//! Pure: bytes in, an [`Interaction`] or a 400 out, no I/O, so a property test can throw
//! arbitrary bodies at it. The signature is checked on the same bytes before this runs.

use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::Value;
use tars_domain::RequestId;
use tars_domain::events::Decision;
use tars_slack::blocks::{APPROVE_ACTION, DENY_ACTION, REVOKE_ACTION};

use crate::error::ApiError;

/// Block id of the token input in the modal.
pub const TOKEN_BLOCK_ID: &str = "kbase_token";
/// Action id of the token input.
pub const TOKEN_ACTION_ID: &str = "token";
/// Callback id of the modal.
pub const MODAL_CALLBACK_ID: &str = "tars_kbase_token";

/// One interaction, reduced to what TARS acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    /// An Approve, Deny or Revoke button was clicked.
    Click(Click),
    /// The token modal was submitted.
    Modal(ModalSubmit),
    /// Anything else (other buttons, other payload types): answered 200, changes nothing.
    Ignored,
}

/// Where an interaction says it came from: checked against `SLACK_TEAM_ID` and
/// `SLACK_CHANNEL_ID` before it decides anything.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    /// The workspace (`team.id`).
    pub team: Option<String>,
    /// The channel of the message (`channel.id`); modals have none.
    pub channel: Option<String>,
}

/// What a button on a request's message asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickAction {
    /// Approve or Deny a pending request.
    Decide(Decision),
    /// End an applied grant now.
    Revoke,
}

/// A click on one of a request's buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// The clicker's Slack user id.
    pub slack_user: String,
    /// What the button asks for.
    pub action: ClickAction,
    /// The request the button names.
    pub request_id: RequestId,
    /// Slack's timestamp of the action: one click, one decision key.
    pub action_ts: Option<String>,
    /// Needed to open the token modal.
    pub trigger_id: Option<String>,
    /// Where to tell the clicker why nothing happened.
    pub response_url: Option<String>,
}

/// A submitted token modal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModalSubmit {
    /// The submitter's Slack user id.
    pub slack_user: String,
    /// The view's id: one submission, one decision key.
    pub view_id: String,
    /// The request and decision the modal was opened for.
    pub meta: ModalMeta,
    /// The token typed in, trimmed (empty when none).
    pub token: String,
}

/// What the modal carries in `private_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct ModalMeta {
    /// The request to decide.
    pub request_id: RequestId,
    /// Approve or Deny.
    pub decision: Decision,
}

#[derive(Deserialize)]
struct Form {
    payload: String,
}

#[derive(Deserialize)]
struct SlackUser {
    id: String,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    action_ts: Option<String>,
}

#[derive(Deserialize)]
struct View {
    id: String,
    #[serde(default)]
    callback_id: Option<String>,
    #[serde(default)]
    private_metadata: Option<String>,
    #[serde(default)]
    state: Value,
}

/// A Slack object named by its id (`team`, `channel`).
#[derive(Deserialize)]
struct Named {
    id: String,
}

#[derive(Deserialize)]
#[serde(tag = "type")]
enum Payload {
    #[serde(rename = "block_actions")]
    BlockActions {
        user: SlackUser,
        #[serde(default)]
        team: Option<Named>,
        #[serde(default)]
        channel: Option<Named>,
        #[serde(default)]
        actions: Vec<Action>,
        #[serde(default)]
        trigger_id: Option<String>,
        #[serde(default)]
        response_url: Option<String>,
    },
    #[serde(rename = "view_submission")]
    ViewSubmission {
        user: SlackUser,
        #[serde(default)]
        team: Option<Named>,
        view: View,
    },
    #[serde(other)]
    Other,
}

fn bad(message: &str) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message.to_owned())
}

/// Parses a form-encoded interaction body (`payload=<json>`).
///
/// Clicks on buttons other than Approve and Deny, and payload types TARS does not use, are
/// [`Interaction::Ignored`] (Slack wants a 200 for them). A block action without actions
/// is a click on nothing: ignored too, but its origin is still returned for checking.
pub fn parse(body: &[u8]) -> Result<(Origin, Interaction), ApiError> {
    let form: Form =
        serde_urlencoded::from_bytes(body).map_err(|_| bad("expected a form with payload="))?;
    let payload: Payload = serde_json::from_str(&form.payload)
        .map_err(|e| bad(&format!("unreadable payload: {e}")))?;
    let id_of = |n: Option<Named>| n.map(|n| n.id);
    match payload {
        Payload::BlockActions {
            user,
            team,
            channel,
            actions,
            trigger_id,
            response_url,
        } => {
            let origin = Origin {
                team: id_of(team),
                channel: id_of(channel),
            };
            let Some(action) = actions.into_iter().next() else {
                return Ok((origin, Interaction::Ignored));
            };
            let what = match action.action_id.as_str() {
                APPROVE_ACTION => ClickAction::Decide(Decision::Approve),
                DENY_ACTION => ClickAction::Decide(Decision::Deny),
                REVOKE_ACTION => ClickAction::Revoke,
                _ => return Ok((origin, Interaction::Ignored)),
            };
            let request_id = action
                .value
                .as_deref()
                .and_then(|v| RequestId::parse(v).ok())
                .ok_or_else(|| bad("the button carries no request id"))?;
            Ok((
                origin,
                Interaction::Click(Click {
                    slack_user: user.id,
                    action: what,
                    request_id,
                    action_ts: action.action_ts,
                    trigger_id,
                    response_url,
                }),
            ))
        }
        Payload::ViewSubmission { user, team, view } => {
            let origin = Origin {
                team: id_of(team),
                channel: None,
            };
            if view.callback_id.as_deref() != Some(MODAL_CALLBACK_ID) {
                return Ok((origin, Interaction::Ignored));
            }
            let meta = view
                .private_metadata
                .as_deref()
                .and_then(|m| serde_json::from_str::<ModalMeta>(m).ok())
                .ok_or_else(|| bad("the modal carries no request"))?;
            let token = view.state["values"][TOKEN_BLOCK_ID][TOKEN_ACTION_ID]["value"]
                .as_str()
                .unwrap_or("")
                .trim()
                .to_owned();
            Ok((
                origin,
                Interaction::Modal(ModalSubmit {
                    slack_user: user.id,
                    view_id: view.id,
                    meta,
                    token,
                }),
            ))
        }
        Payload::Other => Ok((Origin::default(), Interaction::Ignored)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn form(payload: &Value) -> Vec<u8> {
        serde_urlencoded::to_string([("payload", payload.to_string())])
            .expect("encodes")
            .into_bytes()
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,12}".prop_map(Value::from),
            prop_oneof![
                Just("block_actions"),
                Just("view_submission"),
                Just(APPROVE_ACTION),
                Just(DENY_ACTION),
                Just(REVOKE_ACTION),
                Just(MODAL_CALLBACK_ID),
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("type".to_owned()),
                        Just("user".to_owned()),
                        Just("id".to_owned()),
                        Just("actions".to_owned()),
                        Just("action_id".to_owned()),
                        Just("value".to_owned()),
                        Just("view".to_owned()),
                        Just("team".to_owned()),
                        Just("private_metadata".to_owned()),
                        "[a-z_]{1,8}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Any bytes at all: an interaction or a 400, never a panic or another status.
        #[test]
        fn arbitrary_bodies_parse_or_answer_400(body in prop::collection::vec(any::<u8>(), 0..400)) {
            if let Err(e) = parse(&body) {
                prop_assert_eq!(e.status, StatusCode::BAD_REQUEST);
            }
        }

        /// Arbitrary JSON shaped like Slack's, form-encoded: same rule, and a click only
        /// ever comes out of an Approve, Deny or Revoke action carrying a canonical id.
        #[test]
        fn arbitrary_payloads_parse_or_answer_400(payload in arb_json()) {
            match parse(&form(&payload)) {
                Err(e) => prop_assert_eq!(e.status, StatusCode::BAD_REQUEST),
                Ok((_, Interaction::Click(c))) => {
                    let action = &payload["actions"][0];
                    prop_assert!([APPROVE_ACTION, DENY_ACTION, REVOKE_ACTION].iter().any(|a| action["action_id"] == *a));
                    prop_assert_eq!(action["value"].as_str(), Some(c.request_id.as_str()));
                }
                Ok(_) => {}
            }
        }

        /// A well-formed click, with any Slack ids, comes back exactly as sent.
        #[test]
        fn a_click_round_trips(
            user in "[A-Z0-9]{1,12}",
            team in proptest::option::of("T[A-Z0-9]{1,10}"),
            channel in proptest::option::of("C[A-Z0-9]{1,10}"),
            which in 0..3usize,
            ts in proptest::option::of("[0-9]{10}\\.[0-9]{6}"),
            url in proptest::option::of("https://hooks\\.slack\\.com/[a-zA-Z0-9/]{1,30}"),
        ) {
            let id = RequestId::new();
            let action_id = [APPROVE_ACTION, DENY_ACTION, REVOKE_ACTION][which];
            let mut p = json!({
                "type": "block_actions",
                "user": {"id": user},
                "actions": [{"action_id": action_id, "value": id.as_str()}],
            });
            if let Some(t) = &team { p["team"] = json!({"id": t}); }
            if let Some(c) = &channel { p["channel"] = json!({"id": c}); }
            if let Some(ts) = &ts { p["actions"][0]["action_ts"] = json!(ts); }
            if let Some(u) = &url { p["response_url"] = json!(u); }
            let (origin, got) = parse(&form(&p)).expect("parses");
            let want_origin = Origin { team, channel };
            prop_assert_eq!(origin, want_origin);
            prop_assert_eq!(got, Interaction::Click(Click {
                slack_user: user,
                action: [ClickAction::Decide(Decision::Approve), ClickAction::Decide(Decision::Deny), ClickAction::Revoke][which],
                request_id: id,
                action_ts: ts,
                trigger_id: None,
                response_url: url,
            }));
        }
    }

    #[test]
    fn odd_request_ids_on_a_button_are_refused() {
        let id = RequestId::new();
        for value in [
            format!("urn:uuid:{id}"),
            format!("{{{id}}}"),
            id.as_str().to_uppercase(),
            String::new(),
        ] {
            let p = json!({"type": "block_actions", "user": {"id": "U1"},
                "actions": [{"action_id": APPROVE_ACTION, "value": value}]});
            let e = parse(&form(&p)).expect_err(&value);
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{value}");
        }
    }

    #[test]
    fn a_modal_submission_carries_its_request_and_trimmed_token() {
        let id = RequestId::new();
        let meta = serde_json::to_string(&ModalMeta {
            request_id: id.clone(),
            decision: Decision::Deny,
        })
        .expect("encodes");
        let p = json!({"type": "view_submission", "user": {"id": "U1"}, "team": {"id": "T1"},
            "view": {"id": "V1", "callback_id": MODAL_CALLBACK_ID, "private_metadata": meta,
                "state": {"values": {TOKEN_BLOCK_ID: {TOKEN_ACTION_ID: {"value": "  tok  "}}}}}});
        let (origin, got) = parse(&form(&p)).expect("parses");
        assert_eq!(origin.team.as_deref(), Some("T1"));
        let Interaction::Modal(m) = got else {
            panic!("not a modal: {got:?}")
        };
        assert_eq!(m.meta.request_id, id);
        assert_eq!(m.meta.decision, Decision::Deny);
        assert_eq!(m.token, "tok");
        assert_eq!(m.view_id, "V1");
    }
}
