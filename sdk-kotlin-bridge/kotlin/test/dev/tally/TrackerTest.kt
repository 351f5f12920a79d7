// The Kotlin SDK against a real server: delivery, kills, errors, threads.
package dev.tally

import dev.tally.ffi.Client
import dev.tally.ffi.Event
import dev.tally.ffi.EventKind
import dev.tally.ffi.Metric
import dev.tally.ffi.PropertyValue
import dev.tally.ffi.RejectedEvent
import dev.tally.ffi.ReportQuery
import dev.tally.ffi.TallyException
import dev.tally.ffi.Tracker
import dev.tally.ffi.TrackerConfig
import java.io.File
import java.math.BigDecimal
import java.net.ServerSocket
import java.util.UUID
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.milliseconds
import kotlin.time.Duration.Companion.seconds
import kotlin.time.TimeSource
import kotlinx.coroutines.async
import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import kotlinx.coroutines.withTimeout
import org.junit.jupiter.api.AfterEach
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.Timeout
import org.junit.jupiter.api.assertThrows

@Timeout(120)
class TrackerTest {
    private val run = UUID.randomUUID().toString()

    @AfterEach
    fun closeTally() {
        runBlocking { Tally.shutdown(1.seconds) }
    }

    private fun config(site: TestSite, queueDir: String = queueDir()) =
        TrackerConfig(endpoint = TallyServer.endpoint, key = site.ingestKey, queueDir = queueDir)

    @Test
    fun `events tracked from Kotlin are visible in RunReport`() = runBlocking {
        val site = TallyServer.site("report")
        Tally.configure(config(site))
        repeat(3) { i ->
            assertTrue(Tally.track("purchase", mapOf("run" to run, "plan" to "pro", "seats" to i, "trial" to false),
                revenue = Money(BigDecimal("12.34"), "EUR")))
        }
        assertTrue(Tally.screen("Checkout", mapOf("run" to run)))
        assertTrue(Tally.flush(20.seconds), "flush delivers everything")

        assertEquals(mapOf("purchase" to 3L, "Checkout" to 1L), eventsByName(site, run))
        assertEquals(4L, Tally.stats.delivered.toLong())
        assertEquals(0L, Tally.stats.queued.toLong())
    }

    @Test
    fun `events the server rejects are dropped and reported`() = runBlocking {
        val site = TallyServer.site("rejected")
        val rejected = java.util.concurrent.LinkedBlockingQueue<RejectedEvent>()
        Tally.configure(config(site)) { rejected.add(it) }
        val bad = Tally.tracker.track(Event(kind = EventKind.Pageview("not a url")))
        assertTrue(Tally.track("fine", mapOf("run" to run)))
        assertTrue(Tally.flush(20.seconds), "a rejected event is not retried")

        val report = rejected.poll(10, TimeUnit.SECONDS)
        assertEquals(bad, report?.eventId)
        assertEquals("REJECT_REASON_INVALID_URL", report?.reason)
        assertEquals("url", report?.field)
        assertEquals(1L, Tally.stats.rejected.toLong())
        assertEquals(mapOf("fine" to 1L), eventsByName(site, run))
    }

    @Test
    fun `a queue written by a killed JVM is delivered once by the next one`() = runBlocking {
        val site = TallyServer.site("killed")
        val dir = queueDir()
        val unreachable = "http://127.0.0.1:${TallyServer.freePort()}"
        val child = queueWriter(unreachable, site.ingestKey, dir, count = 40)
        val line = child.inputReader().readLine()
        assertEquals("tracked 40", line)
        child.destroyForcibly().waitFor(10, TimeUnit.SECONDS)
        assertFalse(child.isAlive)
        assertEquals(emptyMap<String, Long>(), eventsByName(site, run), "nothing reached the server")

        Tracker(config(site, dir)).use { tracker ->
            assertEquals(40L, tracker.stats().queued.toLong(), "the queue survived the kill")
            tracker.flush(java.time.Duration.ofSeconds(20))
        }
        assertEquals(mapOf("offline" to 40L), eventsByName(site, run))
    }

    @Test
    fun `a JVM killed while sending loses and doubles nothing`() = runBlocking {
        val site = TallyServer.site("midsend")
        val dir = queueDir()
        val child = queueWriter(TallyServer.endpoint, site.ingestKey, dir, count = 300)
        assertEquals("tracked 300", child.inputReader().readLine())
        child.destroyForcibly().waitFor(10, TimeUnit.SECONDS)

        Tracker(config(site, dir)).use { tracker -> tracker.flush(java.time.Duration.ofSeconds(30)) }
        assertEquals(mapOf("offline" to 300L), eventsByName(site, run))
    }

    @Test
    fun `failures surface as Kotlin exceptions with useful messages`() = runBlocking {
        val site = TallyServer.site("errors")

        val badEndpoint = assertThrows<TallyException.InvalidConfig> {
            Tracker(TrackerConfig(endpoint = "not a url", key = site.ingestKey, queueDir = queueDir()))
        }
        assertTrue(badEndpoint.message!!.contains("invalid endpoint \"not a url\""), badEndpoint.message)

        val notADirectory = File.createTempFile("tally", ".file").apply { deleteOnExit() }
        val storage = assertThrows<TallyException.Storage> {
            Tracker(TrackerConfig(endpoint = TallyServer.endpoint, key = site.ingestKey, queueDir = notADirectory.path))
        }
        assertTrue(storage.message!!.contains(notADirectory.path), storage.message)

        val wrongKey = assertThrows<TallyException.Unauthorized> {
            Client(TallyServer.endpoint, "tly_qry_not-a-key").use { client ->
                client.runReport(ReportQuery(siteId = site.siteId, metrics = listOf(Metric.EVENTS)))
            }
        }
        assertTrue(wrongKey.message!!.startsWith("not authorized:"), wrongKey.message)

        val invalid = assertThrows<TallyException.InvalidRequest> {
            Client(TallyServer.endpoint, site.queryKey).use { client ->
                client.runReport(ReportQuery(siteId = site.siteId, metrics = emptyList()))
            }
        }
        assertTrue(invalid.message!!.contains("metrics"), invalid.message)

        Tracker(TrackerConfig(endpoint = "http://127.0.0.1:${TallyServer.freePort()}", key = site.ingestKey,
            queueDir = queueDir())).use { offline ->
            offline.track(Event(kind = EventKind.Custom("queued")))
            val timeout = assertThrows<TallyException.Unavailable> {
                offline.flush(java.time.Duration.ofMillis(200))
            }
            assertTrue(timeout.message!!.contains("1 events still queued"), timeout.message)

            offline.setOptOut(true)
            val optedOut = assertThrows<TallyException.NotTracked> {
                offline.track(Event(kind = EventKind.Custom("ignored")))
            }
            assertEquals("event not tracked: tracking is opted out", optedOut.message)
        }
    }

    @Test
    fun `no call blocks the caller's thread on the network`() {
        // A server that accepts connections and never answers.
        ServerSocket(0).use { blackHole ->
            val site = TallyServer.site("blackhole")
            val config = TrackerConfig(endpoint = "http://127.0.0.1:${blackHole.localPort}", key = site.ingestKey,
                queueDir = queueDir(), batchSize = 10u)
            Tally.configure(config)

            val started = TimeSource.Monotonic.markNow()
            repeat(200) { i -> assertTrue(Tally.track("tap", mapOf("i" to i))) }
            Tally.onBackground()
            val elapsed = started.elapsedNow()
            assertTrue(elapsed < 2.seconds, "200 track() calls and onBackground() took $elapsed")

            // flush suspends: on a single-threaded event loop, other coroutines keep running meanwhile.
            runBlocking {
                val flushed = async { Tally.flush(1.seconds) }
                var ticks = 0
                while (flushed.isActive) {
                    delay(10.milliseconds)
                    ticks++
                }
                assertFalse(flushed.await(), "nothing can be delivered to a black hole")
                assertTrue(ticks >= 20, "the caller's thread ran $ticks times while flush waited")
            }
            assertEquals(200L, Tally.stats.queued.toLong(), "undelivered events stay queued")
        }
    }

    @Test
    fun `going to the background sends queued events without a flush`() = runBlocking {
        val site = TallyServer.site("background")
        // Batches of 100 and an hour's interval: only the lifecycle hook can send these.
        Tally.configure(config(site).copy(batchSize = 100u, flushInterval = java.time.Duration.ofHours(1)))
        repeat(3) { Tally.track("viewed", mapOf("run" to run)) }
        Tally.onForeground()
        assertEquals(0L, Tally.stats.delivered.toLong())

        Tally.onBackground()
        withTimeout(20_000) {
            while (Tally.stats.delivered < 3uL) delay(20)
        }
        assertEquals(mapOf("viewed" to 3L), eventsByName(site, run))
    }

    @Test
    fun `configuring again on the same queue hands its events over once`() = runBlocking {
        val site = TallyServer.site("reconfigure")
        val dir = queueDir()
        Tally.configure(config(site, dir).copy(endpoint = "http://127.0.0.1:${TallyServer.freePort()}"))
        repeat(5) { assertTrue(Tally.track("early", mapOf("run" to run))) }

        Tally.configure(config(site, dir))
        assertEquals(5L, Tally.stats.queued.toLong())
        assertTrue(Tally.flush(20.seconds))
        assertEquals(mapOf("early" to 5L), eventsByName(site, run))
    }

    @Test
    fun `opting out deletes the queue, drops events and is remembered`() = runBlocking {
        val site = TallyServer.site("optout")
        val dir = queueDir()
        val offline = config(site, dir).copy(endpoint = "http://127.0.0.1:${TallyServer.freePort()}")
        Tally.configure(offline)
        assertTrue(Tally.track("before", mapOf("run" to run)))
        Tally.optedOut = true
        assertFalse(Tally.track("during", mapOf("run" to run)))
        assertEquals(0L, Tally.stats.queued.toLong())

        Tally.configure(config(site, dir))
        assertTrue(Tally.optedOut, "the choice survives a restart")
        Tally.optedOut = false
        assertTrue(Tally.track("after", mapOf("run" to run)))
        assertTrue(Tally.flush(20.seconds))
        assertEquals(mapOf("after" to 1L), eventsByName(site, run))
    }

    @Test
    fun `properties keep their Kotlin types`() {
        val typed = properties(mapOf("s" to "x", "n" to 3, "d" to 1.5, "b" to true, "skip" to null, "o" to 'c'))
        assertEquals(
            mapOf(
                "s" to PropertyValue.Text("x"),
                "n" to PropertyValue.Number(3.0),
                "d" to PropertyValue.Number(1.5),
                "b" to PropertyValue.Flag(true),
                "o" to PropertyValue.Text("c"),
            ),
            typed,
        )
        val revenue = Money(BigDecimal("-12.345"), "EUR").toRevenue()
        assertEquals(-12L, revenue.units)
        assertEquals(-345_000_000, revenue.nanos)
    }

    /** Starts [QueueWriter]'s main in a child JVM with this JVM's classpath and library path. */
    private fun queueWriter(endpoint: String, key: String, dir: String, count: Int): Process {
        val java = File(System.getProperty("java.home"), "bin/java").path
        return ProcessBuilder(
            java, "-cp", System.getProperty("java.class.path"),
            "-Djna.library.path=${System.getProperty("jna.library.path")}",
            "dev.tally.QueueWriterKt", endpoint, key, dir, run, count.toString(),
        ).redirectError(ProcessBuilder.Redirect.INHERIT).start()
    }
}
