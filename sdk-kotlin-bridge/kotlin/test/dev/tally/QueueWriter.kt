// The child JVM of the kill test: tracks events into a queue while the server
// is unreachable, says so, and waits to be killed.
package dev.tally

import dev.tally.ffi.Event
import dev.tally.ffi.EventKind
import dev.tally.ffi.PropertyValue
import dev.tally.ffi.Tracker
import dev.tally.ffi.TrackerConfig

/** Arguments: endpoint, ingest key, queue directory, run id, number of events. */
fun main(args: Array<String>) {
    val (endpoint, key, queueDir, run, count) = args
    val tracker = Tracker(TrackerConfig(endpoint = endpoint, key = key, queueDir = queueDir, batchSize = 5u))
    repeat(count.toInt()) { i ->
        tracker.track(
            Event(
                kind = EventKind.Custom("offline"),
                properties = mapOf("run" to PropertyValue.Text(run), "i" to PropertyValue.Number(i.toDouble())),
            ),
        )
    }
    println("tracked $count")
    System.out.flush()
    // Keep sending (and failing) until killed.
    Thread.sleep(Long.MAX_VALUE)
}
