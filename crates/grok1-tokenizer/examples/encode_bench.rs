//! Encode throughput, single-threaded: `encode_bench CORPUS [--repeat R] [--model FILE]`.
//!
//! Encodes every line of CORPUS (one `encode` call per line, as a server would
//! tokenize requests), once to warm up and then R times, and prints one JSON line:
//! MB/s of the best and the median pass, plus a checksum of all ids so a caller
//! can check that another tokenizer produced exactly the same tokens
//! (bench/tokenizer.sh compares it with SentencePiece).

use std::time::Instant;

use grok1_tokenizer::Tokenizer;

fn main() {
    let mut args = std::env::args().skip(1);
    let mut corpus = None;
    let mut repeat = 5usize;
    let mut model = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--repeat" => {
                repeat = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--repeat N")
            }
            "--model" => model = args.next(),
            _ => corpus = Some(a),
        }
    }
    let corpus = corpus.expect("usage: encode_bench CORPUS [--repeat R] [--model FILE]");
    let text = std::fs::read_to_string(&corpus).expect("reading the corpus");
    let lines: Vec<&str> = text.lines().collect();
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let tok = match model {
        Some(path) => Tokenizer::from_file(std::path::Path::new(&path)).expect("tokenizer"),
        None => Tokenizer::grok1(),
    };
    let (mut count, mut sum, mut hash) = (0u64, 0u64, 0xcbf2_9ce4_8422_2325u64);
    for line in &lines {
        for id in tok.encode(line) {
            count += 1;
            sum += id as u64;
            hash = (hash ^ id as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    let mut rates = Vec::new();
    for _ in 0..repeat {
        let start = Instant::now();
        let mut n = 0usize;
        for line in &lines {
            n += tok.encode(line).len();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(n as u64, count);
        rates.push(bytes as f64 / 1e6 / secs);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "{{\"engine\": \"grok1-tokenizer\", \"bytes\": {bytes}, \"lines\": {}, \"ids\": {count}, \"id_sum\": {sum}, \"id_hash\": {hash}, \"mb_per_s_best\": {:.3}, \"mb_per_s_median\": {:.3}, \"repeat\": {repeat}}}",
        lines.len(),
        rates[rates.len() - 1],
        rates[rates.len() / 2]
    );
}
