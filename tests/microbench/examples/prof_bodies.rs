fn main() {
    use integration_tests::chains::{json_document, BODY_EDIT_CHAIN};
    use policy_microbench::Fixture;
    let json = [("content-type".to_owned(), "application/json".to_owned())];
    let doc = json_document(100 * 1024);
    let only_mask = "routes:\n  - name: bench\n    match: { route: echo-default }\n    max_body_bytes: 200000\n    policies:\n      - name: mask\n        config:\n          rules: [{ recognizer: email }, { recognizer: payment_card, action: partial }]\n";
    let only_transform = "routes:\n  - name: bench\n    match: { route: echo-default }\n    max_body_bytes: 200000\n    policies:\n      - name: json-transform\n        config:\n          request:\n            remove: [/*/tags]\n            set: { /0/name: '\"first\"' }\n";
    for (name, cfg) in [
        ("both", BODY_EDIT_CHAIN),
        ("mask", only_mask),
        ("transform", only_transform),
    ] {
        let f = Fixture::post(cfg, "/api/items", &json, doc.clone()).unwrap();
        let t = std::time::Instant::now();
        for _ in 0..50 {
            std::hint::black_box(f.run());
        }
        println!("{name}: {:?} per request", t.elapsed() / 50);
    }
    let t = std::time::Instant::now();
    for _ in 0..50 {
        std::hint::black_box(policy_executor::json::parse(&doc).unwrap());
    }
    println!("strict parse: {:?}", t.elapsed() / 50);
    let t = std::time::Instant::now();
    for _ in 0..50 {
        std::hint::black_box(serde_json::from_slice::<serde_json::Value>(&doc).unwrap());
    }
    println!("serde parse: {:?}", t.elapsed() / 50);
}
