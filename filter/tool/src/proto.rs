//! Just enough protobuf for canned gRPC answers: reading the request
//! headers out of an ext-authz `CheckRequest`, and writing a
//! `CheckResponse` and a `RateLimitResponse`. The field numbers are those
//! of `envoy.service.auth.v3` and `envoy.service.ratelimit.v3`.

/// The fields of one message: number, and the bytes of a length-delimited
/// value (other wire types are skipped). `None` if the bytes are not
/// protobuf.
fn fields(mut bytes: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let key = varint(&mut bytes)?;
        match key & 7 {
            0 => {
                varint(&mut bytes)?;
            }
            1 => bytes = bytes.get(8..)?,
            5 => bytes = bytes.get(4..)?,
            2 => {
                let len = usize::try_from(varint(&mut bytes)?).ok()?;
                out.push((key >> 3, bytes.get(..len)?));
                bytes = bytes.get(len..)?;
            }
            _ => return None,
        }
    }
    Some(out)
}

fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

fn field(message: &[u8], number: u64) -> Option<&[u8]> {
    fields(message)?
        .into_iter()
        .find(|(n, _)| *n == number)
        .map(|(_, v)| v)
}

/// The headers of the request an ext-authz `CheckRequest` asks about
/// (`attributes.request.http.headers`).
pub fn check_request_headers(message: &[u8]) -> Vec<(String, String)> {
    let http = field(message, 1)
        .and_then(|attributes| field(attributes, 4))
        .and_then(|request| field(request, 2));
    let Some(entries) = http.and_then(fields) else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter(|(n, _)| *n == 3)
        .filter_map(|(_, entry)| {
            let text = |n| String::from_utf8(field(entry, n).unwrap_or_default().to_vec()).ok();
            Some((text(1)?, text(2)?))
        })
        .collect()
}

/// Protobuf writer.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn int(mut self, number: u64, value: u64) -> Self {
        self.varint(number << 3);
        self.varint(value);
        self
    }

    fn bytes(mut self, number: u64, value: &[u8]) -> Self {
        self.varint((number << 3) | 2);
        self.varint(value.len() as u64);
        self.0.extend_from_slice(value);
        self
    }

    fn message(self, number: u64, value: Message) -> Self {
        self.bytes(number, &value.0)
    }
}

fn header_option(name: &str, value: &str) -> Message {
    let header = Message::default()
        .bytes(1, name.as_bytes())
        .bytes(2, value.as_bytes());
    Message::default().message(1, header)
}

/// A `CheckResponse` that allows, setting `headers` and removing `remove`
/// on the request, with `metadata` (string values) as its dynamic
/// metadata.
pub fn check_allow<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    remove: impl IntoIterator<Item = &'a str>,
    metadata: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Vec<u8> {
    let mut ok = Message::default();
    for (name, value) in headers {
        ok = ok.message(2, header_option(name, value));
    }
    for name in remove {
        ok = ok.bytes(5, name.as_bytes());
    }
    // google.protobuf.Struct: map<string, Value> fields = 1, and a
    // Value's string_value = 3.
    let mut fields = Message::default();
    for (key, value) in metadata {
        let entry = Message::default()
            .bytes(1, key.as_bytes())
            .message(2, Message::default().bytes(3, value.as_bytes()));
        fields = fields.message(1, entry);
    }
    Message::default()
        .message(1, Message::default())
        .message(3, ok)
        .message(4, fields)
        .0
}

/// A `CheckResponse` that denies with this reply (gRPC status
/// PERMISSION_DENIED).
pub fn check_deny<'a>(
    status: u16,
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    body: &str,
) -> Vec<u8> {
    let mut denied = Message::default().message(1, Message::default().int(1, status.into()));
    for (name, value) in headers {
        denied = denied.message(2, header_option(name, value));
    }
    denied = denied.bytes(3, body.as_bytes());
    Message::default()
        .message(1, Message::default().int(1, 7))
        .message(2, denied)
        .0
}

/// A `RateLimitResponse` with this overall code (1 OK, 2 OVER_LIMIT).
pub fn rate_limit(over_limit: bool) -> Vec<u8> {
    Message::default().int(1, if over_limit { 2 } else { 1 }).0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_come_out_of_a_check_request() {
        let entry = Message::default()
            .bytes(1, b"authorization")
            .bytes(2, b"Bearer good");
        let http = Message::default().message(3, entry);
        let request = Message::default().message(2, http);
        let attributes = Message::default().message(4, request);
        let check = Message::default().message(1, attributes);
        assert_eq!(
            check_request_headers(&check.0),
            [("authorization".to_owned(), "Bearer good".to_owned())]
        );
        assert!(check_request_headers(&[0xff]).is_empty());
    }
}
