// The idiomatic Swift face of the SDK: one app-wide tracker behind a few
// calls. Everything is delegated to the Rust tracker (TallyCore, generated);
// this file only makes it read like Swift.
import Foundation
// Apps import TallySDK alone and still see the generated types (TrackerConfig, Event, ...).
@_exported import TallyCore
#if canImport(UIKit)
import UIKit
#endif

/// Tally's tracker for the app.
///
///     try Tally.configure(TrackerConfig(endpoint: "https://tally.example.com",
///                                       key: "tly_ing_...", queueDir: dir.path))
///     Tally.track("purchase", ["plan": .text(value: "pro")])
///
/// No call waits for the network: `track` returns once the event is on disk,
/// and the Rust core delivers it in the background, retrying until the server
/// has it. `flush` and `shutdown` are async.
public enum Tally {
    /// Name this layer reports in every event's context.
    public static let sdkName = "tally-swift"
    /// Version of this SDK.
    public static let sdkVersion = "0.1.0"

    private final class State: @unchecked Sendable {
        let lock = NSLock()
        var tracker: Tracker?
        var observers: [NSObjectProtocol] = []
    }

    private static let state = State()

    /// Starts tracking with `config`, replacing any tracker configured before,
    /// and sends queued events whenever the app goes to the background. Pass
    /// `context: Tally.context()` in `config` to describe the device.
    /// `onRejected` hears of every event the server rejects, on the SDK's thread.
    @discardableResult
    public static func configure(
        _ config: TrackerConfig, onRejected: (@Sendable (RejectedEvent) -> Void)? = nil
    ) throws -> Tracker {
        let listener: RejectionListener? = onRejected.map { RejectionHandler($0) }
        state.lock.lock()
        defer { state.lock.unlock() }
        // Release a previous tracker before its queue directory is opened again.
        state.tracker = nil
        let tracker = try Tracker(config: config, onRejected: listener)
        state.tracker = tracker
        observeLifecycle(locked: state)
        return tracker
    }

    /// This SDK, the OS, locale and time zone, plus what the app passes.
    public static func context(appVersion: String = "", appBuild: String = "") -> AppContext {
        AppContext(sdkName: sdkName, sdkVersion: sdkVersion, appVersion: appVersion, appBuild: appBuild,
                   locale: Locale.current.identifier, osName: osName,
                   osVersion: ProcessInfo.processInfo.operatingSystemVersionString,
                   timeZone: TimeZone.current.identifier)
    }

    private static var osName: String {
        #if os(iOS)
        return "iOS"
        #elseif os(macOS)
        return "macOS"
        #else
        return ""
        #endif
    }

    /// The configured tracker, for what this type does not wrap.
    public static var tracker: Tracker? {
        state.lock.lock()
        defer { state.lock.unlock() }
        return state.tracker
    }

    /// Tracks a custom event; false when it was not queued (opted out, queue
    /// full, disk error). Never throws: analytics must not break the app.
    @discardableResult
    public static func track(_ name: String, _ properties: [String: PropertyValue] = [:]) -> Bool {
        record(Event(kind: .custom(name: name), properties: properties))
    }

    /// Tracks a screen view, like `track`.
    @discardableResult
    public static func screen(_ name: String, _ properties: [String: PropertyValue] = [:]) -> Bool {
        record(Event(kind: .screen(name: name), properties: properties))
    }

    /// Attaches `userId` to later events; nil clears it.
    public static func identify(_ userId: String?) { tracker?.identify(userId: userId) }

    /// The app went to the background: queued events are sent now.
    public static func onBackground() { tracker?.onBackground() }

    /// The app came back: a new session starts after a long absence.
    public static func onForeground() { tracker?.onForeground() }

    /// Opting out deletes queued events and stops tracking; remembered across launches.
    public static func setOptOut(_ optedOut: Bool) throws { try tracker?.setOptOut(optedOut: optedOut) }

    /// Sends what is queued; true once the server has it all, false at the
    /// timeout (the events stay queued and go out later).
    public static func flush(timeout: TimeInterval = 10) async -> Bool {
        guard let tracker else { return false }
        do {
            try await tracker.flush(timeout: timeout)
            return true
        } catch {
            return false
        }
    }

    /// Delivers what it can within `timeout`, then stops the tracker.
    public static func shutdown(timeout: TimeInterval = 5) async {
        state.lock.lock()
        let tracker = state.tracker
        state.tracker = nil
        state.lock.unlock()
        try? await tracker?.shutdown(timeout: timeout)
    }

    private static func record(_ event: Event) -> Bool {
        guard let tracker else { return false }
        return (try? tracker.track(event: event)) != nil
    }

    /// Sends queued events when the app goes to the background, once; `state` is locked.
    private static func observeLifecycle(locked state: State) {
        #if canImport(UIKit) && !os(watchOS)
        guard state.observers.isEmpty else { return }
        let center = NotificationCenter.default
        state.observers = [
            center.addObserver(forName: UIApplication.didEnterBackgroundNotification, object: nil,
                               queue: nil) { _ in Tally.onBackground() },
            center.addObserver(forName: UIApplication.willEnterForegroundNotification, object: nil,
                               queue: nil) { _ in Tally.onForeground() },
        ]
        #endif
    }
}

/// A closure as the bridge's rejection listener.
private final class RejectionHandler: RejectionListener {
    let handler: @Sendable (RejectedEvent) -> Void

    init(_ handler: @escaping @Sendable (RejectedEvent) -> Void) { self.handler = handler }

    func onRejected(rejected: RejectedEvent) { handler(rejected) }
}
