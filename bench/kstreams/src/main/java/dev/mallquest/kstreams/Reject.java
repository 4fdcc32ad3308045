package dev.mallquest.kstreams;

/** Why a record was rejected: mallquest's DLQ reasons (schemas/dlq-headers.md), plus one. */
public enum Reject {
    TOO_LARGE("too_large"),
    INVALID_JSON("invalid_json"),
    SCHEMA("schema"),
    AMOUNT("amount"),
    CURRENCY("currency"),
    KEY_MISMATCH("key_mismatch"),
    UNKNOWN_ORIGINAL("unknown_original"),
    REFUND_EXCEEDS_ORIGINAL("refund_exceeds_original"),
    CONFLICTING_DUPLICATE("conflicting_duplicate"),
    OVERFLOW("overflow"),
    TOO_OLD("too_old"),
    /** Not mallquest's: a valid redemption or redemption reversal, which this peer does not fold. */
    UNSUPPORTED("unsupported");

    public final String reason;
    /** Thrown instead of returned where that reads better; no stack trace (it is no error). */
    public final Rejected error;

    Reject(String reason) {
        this.reason = reason;
        this.error = new Rejected(this);
    }

    /** A rejection as an exception without a stack trace: cheap to throw per record. */
    public static final class Rejected extends Exception {
        public final Reject reject;

        Rejected(Reject reject) {
            super(reject.reason, null, false, false);
            this.reject = reject;
        }
    }
}
