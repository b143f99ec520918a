#!/bin/sh
# Self-check of the berth test VM; runs INSIDE the guest (busybox sh):
#
#   hack/vm-test.sh hack/vm/selfcheck.sh
#
# Asserts a pure cgroup2 hierarchy with the controllers berth needs, a memory.max OOM kill, pids.max, overlayfs, a
# new network namespace joined to the root one by a veth pair (and a bridge). Exit 0 when all pass.
pass=0
failed=0
ok() { pass=$((pass + 1)); echo "ok   - $*"; }
bad() { failed=$((failed + 1)); echo "FAIL - $*"; }
check() { d=$1; shift; if "$@" >/dev/null; then ok "$d"; else bad "$d"; fi; }

CG=/sys/fs/cgroup

# --- cgroup2 -------------------------------------------------------------------------------------------------
check "cgroup2 is mounted at $CG" test -n "$(awk -v cg=$CG '$2 == cg && $3 == "cgroup2"' /proc/mounts)"
check "no cgroup v1 hierarchy is mounted" test -z "$(awk '$3 == "cgroup"' /proc/mounts)"
ctrls=" $(cat $CG/cgroup.controllers) "
subtree=" $(cat $CG/cgroup.subtree_control) "
for c in cpu memory pids io cpuset; do
	case "$ctrls" in *" $c "*) ok "controller $c available" ;; *) bad "controller $c missing from cgroup.controllers:$ctrls" ;; esac
	case "$subtree" in *" $c "*) ok "controller $c enabled for children" ;; *) bad "controller $c not in subtree_control:$subtree" ;; esac
done

# --- memory.max OOM ------------------------------------------------------------------------------------------
t=$CG/selfcheck-oom
mkdir $t
echo 32M > $t/memory.max
[ -e $t/memory.swap.max ] && echo 0 > $t/memory.swap.max
# busybox dd with bs=64M allocates and fills a 64 MiB buffer.
# (waited for by a subshell whose stderr is discarded: the shell that waits reports "Killed")
rc=$( (sh -c "echo \$\$ > $t/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=64M count=1"; echo $?) 2>/dev/null)
check "64 MiB in a memory.max=32M cgroup is killed (exit $rc, want 137)" test "$rc" = 137
oom=$(awk '$1 == "oom_kill" { print $2 }' $t/memory.events)
check "memory.events oom_kill is 1 (got $oom)" test "$oom" = 1
sh -c "echo \$\$ > $t/cgroup.procs && exec dd if=/dev/zero of=/dev/null bs=16M count=1 2>/dev/null"
check "16 MiB in the same cgroup is fine" test $? = 0
rmdir $t

# --- pids.max, cpu.max ---------------------------------------------------------------------------------------
t=$CG/selfcheck-pids
mkdir $t
echo 4 > $t/pids.max
sh -c "echo \$\$ > $t/cgroup.procs; for i in 1 2 3 4 5 6; do sleep 2 & done; wait" > /tmp/selfcheck-pids.out 2>&1
check "pids.max=4 refuses the 5th fork" grep -qi 'resource\|fork' /tmp/selfcheck-pids.out
ev=$(awk '$1 == "max" { print $2 }' $t/pids.events)
check "pids.events max > 0 (got $ev)" test "${ev:-0}" -gt 0
rmdir $t 2>/dev/null || { sleep 2; rmdir $t; }
t=$CG/selfcheck-cpu
mkdir $t
check "cpu.max accepts a quota" sh -c "echo '10000 100000' > $t/cpu.max && grep -q '^10000 100000' $t/cpu.max"
check "cpuset.cpus accepts cpu 0" sh -c "echo 0 > $t/cpuset.cpus && test \"\$(cat $t/cpuset.cpus.effective)\" = 0"
check "io.max exists" test -e $t/io.max
rmdir $t

# --- overlayfs -----------------------------------------------------------------------------------------------
o=/tmp/selfcheck-ovl
mkdir -p $o/lower $o/upper $o/work $o/merged
echo lower > $o/lower/a
if mount -t overlay overlay -o lowerdir=$o/lower,upperdir=$o/upper,workdir=$o/work $o/merged; then
	ok "overlayfs mounts"
	check "overlay shows the lower file" test "$(cat $o/merged/a)" = lower
	echo upper > $o/merged/b
	check "overlay writes go to the upper dir" test "$(cat $o/upper/b)" = upper
	umount $o/merged
else
	bad "overlayfs mounts"
fi

# --- pivot_root into a container-like root (fails on an initramfs rootfs; init switch_roots to a tmpfs) -------
r=/tmp/selfcheck-root
mkdir -p $r
out=$(unshare -m -p -f sh -c "mount --make-rprivate / && mount -t tmpfs tmpfs $r && mkdir $r/bin $r/old && \
	cp /bin/busybox $r/bin/ && cd $r && pivot_root . old && exec /bin/busybox sh -c 'umount -l /old && echo pid \$\$'" 2>&1)
check "pivot_root in a new mount+pid namespace ($out)" test "$out" = "pid 1"
check "/ has shared propagation, like a systemd host" sh -c "grep -q '^[0-9]* [0-9]* [^ ]* / / .*shared:' /proc/self/mountinfo"

# --- network namespace + veth + bridge -----------------------------------------------------------------------
unshare -n sh -c 'ip link set lo up; sleep 30' &
nspid=$!
sleep 0.3
check "new netns has its own links" sh -c "test \"\$(nsenter -t $nspid -n ip -o link | wc -l)\" = 1"
# busybox ip ignores "peer name": the peer gets an automatic name, found by its peer ifindex.
if ip link add sc-host type veth; then
	ok "veth pair created"
	peer=$(ip -o link | awk -F': ' '$2 != "sc-host@" && $2 ~ /^veth[0-9]+@sc-host$/ { sub(/@.*/, "", $2); print $2 }')
	[ -n "$peer" ] && ip link set "$peer" name sc-ctr
	check "veth peer moved into the netns" ip link set sc-ctr netns $nspid
	ip addr add 10.254.0.1/30 dev sc-host
	ip link set sc-host up
	nsenter -t $nspid -n sh -c 'ip addr add 10.254.0.2/30 dev sc-ctr && ip link set sc-ctr up'
	sleep 0.5
	check "ping over the veth into the netns" ping -q -c 1 -W 3 10.254.0.2
	check "ping from the netns back to the root ns" nsenter -t $nspid -n ping -q -c 1 -W 3 10.254.0.1
	ip link del sc-host
else
	bad "veth pair created"
fi
kill $nspid 2>/dev/null
check "bridge created" ip link add sc-br0 type bridge
ip link del sc-br0 2>/dev/null

echo "selfcheck: $pass passed, $failed failed"
[ $failed = 0 ]
