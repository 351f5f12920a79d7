// swift-tools-version:5.9
// The Tally Swift package: the Rust core as an XCFramework (built by
// build-xcframework.sh on a Mac), its generated bindings (TallyCore, kept in
// sync by check-bindings.sh) and a thin Swift layer (TallySDK).
import PackageDescription

let package = Package(
    name: "Tally",
    platforms: [.iOS(.v13), .macOS(.v10_15)],
    products: [
        .library(name: "TallySDK", targets: ["TallySDK"]),
    ],
    targets: [
        .binaryTarget(name: "TallyCoreFFI", path: "TallyCoreFFI.xcframework"),
        .target(name: "TallyCore", dependencies: ["TallyCoreFFI"], path: "Sources/TallyCore"),
        .target(name: "TallySDK", dependencies: ["TallyCore"], path: "Sources/TallySDK"),
    ]
)
