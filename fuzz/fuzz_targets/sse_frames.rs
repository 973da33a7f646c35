//! SSE relayed from upstreams: the endpoint event is found the same however the stream is
//! cut into chunks, and the boundary tracker agrees with the whole stream.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_oauth_gateway::proxy::sse::{Tail, at_event_boundary, find_event};

fuzz_target!(|data: &[u8]| {
    let whole = find_event(data, "endpoint");
    if let Some((start, end, text)) = &whole {
        assert!(start < end && *end <= data.len());
        // The event is complete where it ends: nothing after it changes it. (A lone CR at the
        // very end is read only once the next byte shows it is not the first half of CRLF.)
        if data[*end - 1] != b'\r' {
            assert_eq!(find_event(&data[..*end], "endpoint"), Some((*start, *end, text.clone())));
        }
    }
    // Arriving in pieces, the first piece that holds the event finds the same one.
    for cut in [1usize, 2, 3, 7, 64] {
        let mut seen = Vec::new();
        let mut tail = Tail::default();
        for piece in data.chunks(cut) {
            seen.extend_from_slice(piece);
            tail.push(piece);
            if let Some(found) = find_event(&seen, "endpoint") {
                assert_eq!(Some(found), whole.clone());
                break;
            }
        }
        let mut whole_tail = Tail::default();
        whole_tail.push(data);
        let mut piecewise = Tail::default();
        for piece in data.chunks(cut) {
            piecewise.push(piece);
        }
        assert_eq!(whole_tail.at_boundary(), piecewise.at_boundary());
    }
    let _ = at_event_boundary(data);
});
