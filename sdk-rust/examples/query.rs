//! A query script: the top pages of the last 7 days with visitors.
//!
//! `TALLY_ENDPOINT=http://127.0.0.1:7750 TALLY_KEY=tly_qry_... TALLY_SITE=example.com cargo run -p tally-sdk --example query`

use tally_sdk::{CallError, Client, proto as v1};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::var("TALLY_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:7750".into());
    let client = Client::builder(endpoint)
        .key(std::env::var("TALLY_KEY")?)
        .build()?;
    let page = v1::DimensionSpec {
        kind: Some(v1::dimension_spec::Kind::Standard(v1::Dimension::Page as i32)),
    };
    let request = v1::RunReportRequest {
        site_id: std::env::var("TALLY_SITE")?,
        metrics: vec![v1::Metric::Pageviews as i32, v1::Metric::Visitors as i32],
        dimensions: vec![page],
        date_ranges: vec![v1::DateRange {
            start_date: "6daysAgo".into(),
            end_date: "today".into(),
            name: String::new(),
        }],
        limit: 10,
        ..Default::default()
    };
    let report = match client.run_report(request).await {
        Ok(report) => report,
        Err(CallError::Invalid { violations, .. }) => {
            for v in violations {
                eprintln!("{}: {}", v.field, v.description);
            }
            std::process::exit(2);
        }
        Err(err) => return Err(err.into()),
    };
    println!("{:<40} {:>10} {:>10}", "page", "pageviews", "visitors");
    for row in &report.rows {
        let value = |i: usize| match row.metric_values[i].value {
            Some(v1::metric_value::Value::IntValue(n)) => n.to_string(),
            Some(v1::metric_value::Value::DoubleValue(x)) => format!("{x:.2}"),
            None => String::new(),
        };
        println!(
            "{:<40} {:>10} {:>10}",
            row.dimension_values[0],
            value(0),
            value(1)
        );
    }
    println!("{} pages in all", report.row_count);
    Ok(())
}
