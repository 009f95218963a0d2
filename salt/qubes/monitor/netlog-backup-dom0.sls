{#- netlog nightly backup, in dom0 (seed SLS 2):
    sudo qubesctl state.show_sls qubes.monitor.netlog-backup-dom0
    sudo qubesctl --show-output state.sls qubes.monitor.netlog-backup-dom0
    Only a script and two units: nothing else is installed in dom0. -#}
{%- from "qubes/monitor/map.jinja" import sysmon with context %}
{%- set root = sysmon.root %}

netlog-backup-script:
  file.managed:
    - name: {{ root }}/usr/local/bin/qubes-netlogs-backup
    - source: salt://qubes/monitor/files/qubes-netlogs-backup
    - mode: '0755'
    - makedirs: true

netlog-backup-config:
  file.managed:
    - name: {{ root }}/etc/qubes/netlog.conf
    - mode: '0644'
    - makedirs: true
    - contents: |
        # netlog backup settings (salt: qubes.monitor.netlog-backup-dom0).
        NETLOG_VAULT={{ sysmon.vault }}
        NETLOG_PCAP_SOURCES="{{ sysmon.netlog_pcap_sources | join(' ') }}"
        NETLOG_FW_SOURCES="{{ sysmon.netlog_fw_sources | join(' ') }}"
        # The capture settings netlog-template gives the capture qubes: the
        # per-qube byte caps and deadlines are sized from them (docs/netlog.md).
        NETLOG_CAPTURE_ROTATE_SECONDS={{ sysmon.netlog_rotate_seconds }}
        NETLOG_CAPTURE_KEEP_FILES={{ sysmon.netlog_keep_files }}
        NETLOG_CAPTURE_SNAPLEN={{ sysmon.netlog_snaplen }}
        NETLOG_CAPTURE_PACKETS_PER_SECOND={{ sysmon.netlog_packets_per_second }}

{%- for unit in ['qubes-netlogs-backup.service', 'qubes-netlogs-backup.timer'] %}
netlog-backup-unit-{{ unit }}:
  file.managed:
    - name: {{ root }}/etc/systemd/system/{{ unit }}
    - source: salt://qubes/monitor/files/{{ unit }}
    - mode: '0644'
    - makedirs: true
{%- endfor %}

{%- if sysmon.enable_unit %}
netlog-backup-timer:
  service.running:
    - name: qubes-netlogs-backup.timer
    - enable: true
    - watch:
      - file: netlog-backup-unit-qubes-netlogs-backup.timer
{%- endif %}
