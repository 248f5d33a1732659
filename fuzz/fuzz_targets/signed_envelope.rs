//! Decoding and verifying a signed envelope must never panic and must never
//! accept anything but the exact bytes that were signed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use machinery::signing::{self, Purpose, SigningKey};

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[42; 32]);
    if let Ok((payload, sig)) = signing::envelope_decode(data) {
        if signing::verify(Purpose::Config, &key.verifying_key(), &payload, &sig).is_ok() {
            // Only a real signature by this key over this payload verifies.
            assert_eq!(sig, signing::sign(Purpose::Config, &key, &payload));
        }
    }
    // A valid envelope of the fuzz input round-trips.
    let sig = signing::sign(Purpose::Config, &key, data);
    let env = signing::envelope_encode(data, &sig);
    let (p, s) = signing::envelope_decode(&env).expect("own envelope decodes");
    assert_eq!((p.as_slice(), s.as_slice()), (data, sig.as_slice()));
});
