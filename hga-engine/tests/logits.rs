//! The dense forward pass reproduces the Hugging Face reference logits of tiny-code (bf16 reference,
//! f32 engine): measured max |Δlogit| 0.053 and ΔNLL −0.00025; the bounds leave 2× and 20× room.

mod common;

use std::process::Command;

#[test]
fn reproduces_reference_logits_through_the_cli() {
    let json = std::env::temp_dir().join(format!("hga-engine-logits-{}.json", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_hga-engine"))
        .args(["logits-check", "--model"])
        .arg(common::tiny_code())
        .arg("--data")
        .arg(common::dev_data())
        .args(["--max-dlogit", "0.1", "--max-dnll", "0.005", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.contains("PASS"), "logits-check failed");
    let r: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    let max = r["max_abs_dlogit"].as_f64().unwrap();
    let dnll = r["mean_nll"].as_f64().unwrap() - r["reference_mean_nll"].as_f64().unwrap();
    assert!(max < 0.1, "max |Δlogit| {max}");
    assert!(dnll.abs() < 0.005, "ΔNLL {dnll}");
    assert!(r["max_abs_dnll_first"].as_f64().unwrap() < 0.1);
    let positions = r["positions"].as_array().unwrap();
    assert_eq!(positions.len(), 6);
    for p in positions {
        assert!(p["max_abs_dlogit"].as_f64().unwrap() < 0.1, "{p}");
        assert_eq!(p["argmax_agrees"], true, "{p}");
    }
}
