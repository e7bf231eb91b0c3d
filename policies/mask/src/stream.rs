//! Masking a response as it flows.
//!
//! How a response is read is chosen at its first chunk, from its
//! `content-type` and its first bytes:
//!
//! * `text/event-stream`: event by event. An event's `data:` lines are
//!   joined and masked as one unit (as JSON if they are JSON), so a match
//!   split across chunks, or across the `data:` lines of an event, is
//!   found; its other lines are masked as text. Only the event being
//!   received is held, up to `max_bytes`.
//! * JSON (by `content-type`, by its first byte, or because `fields`
//!   names members): held whole, up to `max_bytes`, and masked in its
//!   decoded strings. A JSON body cannot be masked in pieces: an escape
//!   (`\u0040`) may hide what a pattern looks for.
//! * Anything else: as text, passing on all but the last `window_bytes`
//!   of what has arrived. A match that crosses that point is held until
//!   it is whole, so a secret split across two chunks is still masked.
//!
//! A fault (a `deny` rule, a body that is not JSON, more than `max_bytes`
//! to hold) refuses the response: replaced with 502 if the client has had
//! none of it, else the stream is reset.

use std::sync::Arc;

use policy_executor::{BodyStream, Context, LocalReply};

use crate::scan::{Fault, Findings};
use policy_executor::json;

use crate::{note_findings, Direction, Settings};

/// How the response is read, once its first chunk came.
enum Reading {
    Undecided,
    Text,
    Events,
    Whole,
}

/// One response's masking state.
pub(crate) struct MaskStream {
    settings: Arc<Settings>,
    reading: Reading,
    /// What has arrived and is not passed on yet.
    held: Vec<u8>,
    findings: Findings,
}

impl MaskStream {
    pub(crate) fn new(settings: Arc<Settings>) -> Self {
        Self {
            settings,
            reading: Reading::Undecided,
            held: Vec::new(),
            findings: Findings::new(),
        }
    }

    fn decide(&mut self, cx: &Context) {
        let content_type = cx.message_headers().get("content-type");
        let media = content_type
            .and_then(|c| c.split(';').next())
            .map(|m| m.trim().to_ascii_lowercase());
        let first = self.held.iter().find(|b| !b.is_ascii_whitespace());
        self.reading = if media.as_deref() == Some("text/event-stream") {
            Reading::Events
        } else if json::is_json_media_type(content_type)
            || !self.settings.masker.fields.is_empty()
            || matches!(first, Some(b'{' | b'[' | b'"'))
        {
            Reading::Whole
        } else if first.is_none() {
            // Only whitespace so far: decide on the next chunk.
            Reading::Undecided
        } else {
            Reading::Text
        };
    }

    fn step(&mut self, cx: &Context, end: bool) -> Result<Vec<u8>, Fault> {
        let settings = Arc::clone(&self.settings);
        let masker = &settings.masker;
        match self.reading {
            Reading::Undecided if end => Ok(std::mem::take(&mut self.held)),
            Reading::Undecided => Ok(Vec::new()),
            Reading::Whole if end => {
                let body = std::mem::take(&mut self.held);
                let declared = json::is_json_media_type(cx.message_headers().get("content-type"));
                Ok(masker
                    .mask_unit(&body, declared, &mut self.findings)?
                    .unwrap_or(body))
            }
            Reading::Whole => self.bounded().map(|()| Vec::new()),
            Reading::Text if end => {
                let body = std::mem::take(&mut self.held);
                Ok(masker.mask_text(&body, &mut self.findings)?.unwrap_or(body))
            }
            Reading::Text => {
                let hits = masker.find(&self.held);
                let mut boundary = self.held.len().saturating_sub(settings.window_bytes);
                // A match that crosses the boundary waits until it is whole.
                if let Some(crossing) = hits.iter().find(|h| h.start < boundary && h.end > boundary)
                {
                    boundary = crossing.start;
                }
                self.bounded()?;
                let before: Vec<_> = hits.iter().copied().filter(|h| h.end <= boundary).collect();
                let passed = self.held.drain(..boundary).collect::<Vec<u8>>();
                masker.apply(&passed, &before, &mut self.findings)
            }
            Reading::Events => {
                let mut out = Vec::new();
                while let Some(length) = event_length(&self.held) {
                    let event: Vec<u8> = self.held.drain(..length).collect();
                    out.extend(self.mask_event(&event)?);
                }
                self.bounded()?;
                if end && !self.held.is_empty() {
                    let event = std::mem::take(&mut self.held);
                    out.extend(self.mask_event(&event)?);
                }
                Ok(out)
            }
        }
    }

    /// Refuses to hold more than `max_bytes`.
    fn bounded(&self) -> Result<(), Fault> {
        if self.held.len() > self.settings.max_bytes {
            return Err(Fault::NotJson(format!(
                "more than max_bytes ({}) to hold",
                self.settings.max_bytes
            )));
        }
        Ok(())
    }

    /// One SSE event, its `data:` masked as one unit.
    fn mask_event(&mut self, event: &[u8]) -> Result<Vec<u8>, Fault> {
        let settings = Arc::clone(&self.settings);
        let masker = &settings.masker;
        let lines: Vec<&[u8]> = event.split_inclusive(|b| *b == b'\n').collect();
        let data: Vec<&[u8]> = lines.iter().filter_map(|line| data_of(line)).collect();
        let masked = if data.is_empty() {
            None
        } else {
            masker.mask_unit(&data.join(&b'\n'), false, &mut self.findings)?
        };
        let mut out = Vec::with_capacity(event.len());
        let mut written = false;
        for line in lines {
            if data_of(line).is_none() {
                // Other fields (`event:`, `id:`, comments) reach clients
                // too, and anything but SSE reads them: masked as text.
                match masker.mask_text(line, &mut self.findings)? {
                    Some(line) => out.extend_from_slice(&line),
                    None => out.extend_from_slice(line),
                }
                continue;
            }
            match &masked {
                None => out.extend_from_slice(line),
                Some(masked) if !written => {
                    written = true;
                    for part in masked.split(|b| *b == b'\n') {
                        out.extend_from_slice(b"data: ");
                        out.extend_from_slice(part);
                        out.push(b'\n');
                    }
                }
                Some(_) => {}
            }
        }
        Ok(out)
    }
}

/// The value of a `data:` line (without the one space that may follow the
/// colon, and without its line end); `None` for other lines.
fn data_of(line: &[u8]) -> Option<&[u8]> {
    let value = line.strip_prefix(b"data:")?;
    let value = value.strip_prefix(b" ").unwrap_or(value);
    let value = value.strip_suffix(b"\n").unwrap_or(value);
    Some(value.strip_suffix(b"\r").unwrap_or(value))
}

/// The length of the first whole event in `held` (through the blank line
/// that ends it), if one has arrived.
fn event_length(held: &[u8]) -> Option<usize> {
    let mut at = 0;
    let mut line_start = 0;
    while at < held.len() {
        if held[at] == b'\n' {
            let line = &held[line_start..at];
            if line.is_empty() || line == b"\r" {
                return Some(at + 1);
            }
            line_start = at + 1;
        }
        at += 1;
    }
    None
}

impl BodyStream for MaskStream {
    fn push(&mut self, cx: &mut Context, chunk: &[u8], end: bool) -> Result<Vec<u8>, LocalReply> {
        self.held.extend_from_slice(chunk);
        if matches!(self.reading, Reading::Undecided) {
            self.decide(cx);
        }
        let result = self.step(cx, end);
        if end || result.is_err() {
            note_findings(cx, &self.findings, Direction::Response);
        }
        result.map_err(|fault| {
            log::warn!(
                "mask on {:?}: upstream response refused: {}",
                cx.route().chain,
                match &fault {
                    Fault::Denied(rule) => format!("rule {rule} denies it"),
                    Fault::NotJson(why) => why.clone(),
                }
            );
            LocalReply::text(502, "upstream response refused by policy\n")
        })
    }
}
