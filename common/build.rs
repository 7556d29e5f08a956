//! Generates the gRPC protocol (tonic + prost) from `proto/mofang.proto`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/mofang.proto");
    tonic_prost_build::configure()
        .type_attribute(
            ".mofang.v1",
            "#[derive(serde::Serialize, serde::Deserialize)]",
        )
        .type_attribute(".mofang.v1", "#[serde(default)]")
        // Ordered, so two reports of the same values compare equal and print in one order.
        .btree_map(".mofang.v1.MemberStatus.parameters")
        .compile_protos(&["proto/mofang.proto"], &["proto"])?;
    Ok(())
}
