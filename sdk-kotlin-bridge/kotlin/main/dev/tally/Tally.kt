// The idiomatic Kotlin face of the SDK: one process-wide tracker behind a few
// calls. Everything it does is delegated to the Rust tracker (dev.tally.ffi,
// generated); this file only makes it read like Kotlin.
package dev.tally

import dev.tally.ffi.AppContext
import dev.tally.ffi.Event
import dev.tally.ffi.EventKind
import dev.tally.ffi.PropertyValue
import dev.tally.ffi.RejectedEvent
import dev.tally.ffi.RejectionListener
import dev.tally.ffi.Revenue
import dev.tally.ffi.TallyException
import dev.tally.ffi.Tracker
import dev.tally.ffi.TrackerConfig
import dev.tally.ffi.TrackerStats
import java.math.BigDecimal
import java.math.RoundingMode
import java.util.Locale
import java.util.TimeZone
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds
import kotlin.time.toJavaDuration
import kotlinx.coroutines.runBlocking

/**
 * Tally's tracker for the app.
 *
 * ```
 * Tally.configure(TrackerConfig(endpoint = "https://tally.example.com", key = "tly_ing_…", queueDir = dir))
 * Tally.track("purchase", mapOf("plan" to "pro", "seats" to 3))
 * ```
 *
 * No call waits for the network: [track] returns once the event is on disk,
 * and a background thread of the Rust core delivers it in batches, retrying
 * until the server has it. [flush] and [shutdown] suspend; they never block
 * the calling thread. Events survive offline periods and the process being
 * killed: the next [configure] on the same `queueDir` delivers them, once.
 */
object Tally {
    /** Name this layer reports in every event's context. */
    const val SDK_NAME = "tally-kotlin"

    /** Version of this SDK. */
    const val SDK_VERSION = "0.1.0"

    @Volatile
    private var current: Tracker? = null

    /**
     * Starts tracking with [config]. A tracker configured before is stopped
     * first (without waiting for the network: its undelivered events stay in
     * its queue), so the same `queueDir` is never open twice.
     * Without `config.context`, the JVM's locale, time zone
     * and OS are sent. [onRejected] hears of every event the server rejects
     * (dropped, never retried), on the SDK's thread. Throws
     * [TallyException.InvalidConfig] for a bad endpoint or key and
     * [TallyException.Storage] when `queueDir` cannot be used.
     */
    @Synchronized
    fun configure(config: TrackerConfig, onRejected: ((RejectedEvent) -> Unit)? = null): Tracker {
        val context = config.context ?: defaultContext()
        val described = context.copy(
            sdkName = context.sdkName.ifEmpty { SDK_NAME },
            sdkVersion = context.sdkVersion.ifEmpty { SDK_VERSION },
        )
        val listener = onRejected?.let { handler ->
            object : RejectionListener {
                override fun onRejected(rejected: RejectedEvent) = handler(rejected)
            }
        }
        current?.let { previous ->
            current = null
            previous.use { runBlocking { delivered { it.shutdown(java.time.Duration.ZERO) } } }
        }
        val tracker = Tracker(config.copy(context = described), listener)
        current = tracker
        return tracker
    }

    /** The configured tracker, for what this object does not wrap (stats, context, session id). */
    val tracker: Tracker
        get() = current ?: throw IllegalStateException("call Tally.configure(...) before using Tally")

    /**
     * Tracks a custom event. Property values may be strings, numbers or
     * booleans (anything else is sent as its `toString()`; nulls are skipped).
     * Returns false when the event was not queued: tracking is opted out, the
     * queue is full, or the disk refused it. Never throws for those: analytics
     * must not break the app. Use [tracker] directly to see the reason.
     */
    fun track(name: String, props: Map<String, Any?> = emptyMap(), revenue: Money? = null): Boolean =
        record(Event(kind = EventKind.Custom(name), properties = properties(props), revenue = revenue?.toRevenue()))

    /** Tracks a screen view, like [track]. */
    fun screen(name: String, props: Map<String, Any?> = emptyMap()): Boolean =
        record(Event(kind = EventKind.Screen(name), properties = properties(props)))

    /** Attaches [userId] to later events; null clears it. */
    fun identify(userId: String?) = tracker.identify(userId)

    /** Call when the app goes to the background: queued events are sent now. */
    fun onBackground() = tracker.onBackground()

    /** Call when the app comes back: a new session starts after a long absence. */
    fun onForeground() = tracker.onForeground()

    /**
     * Whether the user opted out. Opting out deletes queued events and stops
     * tracking until opted back in; the choice survives restarts.
     */
    var optedOut: Boolean
        get() = tracker.isOptedOut()
        set(value) = tracker.setOptOut(value)

    /** Counters since [configure]. */
    val stats: TrackerStats
        get() = tracker.stats()

    /**
     * Sends what is queued and suspends until the server has it all (true) or
     * [timeout] passes (false; the events stay queued and go out later).
     */
    suspend fun flush(timeout: Duration = 10.seconds): Boolean = delivered { tracker.flush(timeout.toJavaDuration()) }

    /**
     * Delivers what it can within [timeout], then stops and releases the
     * tracker: true when everything was delivered. What is not stays queued
     * for the next [configure].
     */
    suspend fun shutdown(timeout: Duration = 5.seconds): Boolean {
        val tracker = synchronized(this) { current.also { current = null } } ?: return true
        return tracker.use { delivered { it.shutdown(timeout.toJavaDuration()) } }
    }

    /** Runs [send]; false when it timed out with events still queued. */
    private inline fun delivered(send: () -> Unit): Boolean =
        try {
            send()
            true
        } catch (e: TallyException.Unavailable) {
            false
        }

    private fun record(event: Event): Boolean =
        try {
            tracker.track(event)
            true
        } catch (e: TallyException) {
            false
        }

    private fun defaultContext() = AppContext(
        osName = System.getProperty("os.name").orEmpty(),
        osVersion = System.getProperty("os.version").orEmpty(),
        locale = Locale.getDefault().toLanguageTag(),
        timeZone = TimeZone.getDefault().id,
    )
}

/** An amount of money in an ISO 4217 [currency], e.g. `Money(BigDecimal("12.34"), "EUR")`. */
data class Money(val amount: BigDecimal, val currency: String) {
    internal fun toRevenue(): Revenue {
        val units = amount.setScale(0, RoundingMode.DOWN)
        val nanos = amount.subtract(units).movePointRight(9).setScale(0, RoundingMode.HALF_EVEN)
        return Revenue(currency = currency, units = units.longValueExact(), nanos = nanos.intValueExact())
    }
}

/** Kotlin values as typed properties: strings, numbers and booleans keep their type. */
internal fun properties(props: Map<String, Any?>): Map<String, PropertyValue> =
    props.mapNotNull { (key, value) ->
        val typed = when (value) {
            null -> return@mapNotNull null
            is String -> PropertyValue.Text(value)
            is Boolean -> PropertyValue.Flag(value)
            is Number -> PropertyValue.Number(value.toDouble())
            else -> PropertyValue.Text(value.toString())
        }
        key to typed
    }.toMap()
