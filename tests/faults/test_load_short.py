"""A short load run in the test suite: ten simulated participants take whole sessions at the same time against the
threaded test server, with double clicks and reloads, and every answer they sent is stored exactly once."""

import pytest

from benchmarks.participant_bots import run_bots, stored_answers, stored_vs_sent
from studyplatform.models import Participant, Response

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

N_BOTS = 10


def test_ten_concurrent_participants_lose_and_duplicate_nothing(live_server, open_study):
    bots, recorder = run_bots(live_server.url, open_study.slug, N_BOTS, replay_rate=0.3, seed=1)

    assert recorder.errors == []
    # Every session was completed and each bot saw the study's completion code.
    assert [bot.completion_code for bot in bots] == [open_study.completion_code] * N_BOTS
    assert Participant.objects.filter(status=Participant.Status.COMPLETED).count() == N_BOTS

    check = stored_vs_sent(bots, stored_answers(bot.token for bot in bots))
    trials_per_session = 3 * open_study.block1_patients + 2 * open_study.block2_cases
    assert check["sent"] == N_BOTS * trials_per_session
    assert (check["lost"], check["duplicated"], check["changed"], check["unexpected"]) == (0, 0, 0, 0), check
    assert Response.objects.count() == check["sent"]
    # Replays really happened (and were answered 200 without a second row).
    assert recorder.summary()["per"]["replay"]["n"] > 0
